"""`rtdenoise view` headless: napari under Xvfb, frames arriving from a live service, a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

pytest.importorskip("napari", reason="pip install 'rtdenoise[viewer]'")
if shutil.which("xvfb-run") is None:
    pytest.skip("xvfb-run is not installed (apt install xvfb libgl1-mesa-dri): the viewer needs a display",
                allow_module_level=True)

from rtdenoise.stream import Publisher, Service  # noqa: E402

pytestmark = pytest.mark.timeout(180)
SRC = Path(__file__).resolve().parents[1] / "src"


def _view(args, feed, timeout=120):
    """Run `rtdenoise view ARGS` under Xvfb while `feed()` publishes; its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-m", "rtdenoise.cli",
                             "view", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    i = 0
    while proc.poll() is None and time.monotonic() < deadline:
        feed(i)
        i += 1
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def _varied(png: Path) -> float:
    img = imread(png)
    return float(img[..., :3].std())


def test_viewer_shows_a_live_movie_with_its_counters(tmp_path):
    from test_integrations import _engine  # the tiny imaging model

    rng = np.random.default_rng(0)
    movie = rng.poisson(rng.uniform(50, 400, (1, 48, 40)), (20, 48, 40)).astype(np.uint16)
    shot = tmp_path / "view.png"
    with Service(engine=_engine(0), sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*",
                 control="ipc://*") as svc, Publisher(svc.sub_address, stream="cam") as pub:
        rc, out, err = _view(["--sub", svc.pub_address, "--stream", "cam", "--frames", "30", "--screenshot", str(shot)],
                             lambda i: pub.send(movie[i % len(movie)][None]))
    assert rc == 0, out + err[-2000:]
    assert "rtdenoise view: " in out and "lost 0" in out, out
    assert int(out.split("rtdenoise view: ")[1].split()[0]) >= 30
    assert shot.stat().st_size > 5_000 and _varied(shot) > 0.02  # frames on the canvas, not a blank one


def test_viewer_shows_spectra_raw_beside_denoised(tmp_path, ck, noisy_frames):
    x = noisy_frames(200)
    shot = tmp_path / "spectra.png"
    with Publisher("tcp://127.0.0.1:*", stream="fiber0", bind=True) as acq, \
            Service(model=ck, sub=acq.address, pub="tcp://127.0.0.1:*", control="ipc://*") as svc:
        rc, out, err = _view(["--sub", svc.pub_address, "--raw", acq.address, "--frames", "60",
                              "--screenshot", str(shot)], lambda i: acq.send(x[i % len(x)]))
    assert rc == 0, out + err[-2000:]
    raw = int(out.split(" denoised frames, ")[1].split()[0])
    assert raw > 0 and "lost 0" in out, out  # the raw stream is counted too (it may start later)
    assert _varied(shot) > 0.02
    img = imread(shot)[..., :3]
    # the whole of both panels on the canvas: before, the view kept the first rows' extent and
    # the grown spectrograms ran off its left, right and bottom edges
    assert img[:, :4].std() < 0.01 and img[:4].std() < 0.01, "the canvas crops the panels"


def test_viewer_says_why_when_no_frame_comes(tmp_path):
    """Acceptance review: with no service at --sub, `view --frames` exited 1 with no reason."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = _view(["--sub", f"tcp://127.0.0.1:{port}", "--frames", "5", "--timeout", "2"], lambda i: None)
    assert rc == 1, out + err[-2000:]
    assert f"0 of the 5 denoised frames asked for came from tcp://127.0.0.1:{port} within 2 s" in err, err[-2000:]
    assert "is the service running" in err
