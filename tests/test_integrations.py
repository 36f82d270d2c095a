"""Microscope software on the wire: the pycro-manager image processor against a real service."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rtdenoise.backends import load_engine
from rtdenoise.integrations.pycromanager import _as_dtype, denoise_processor
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig
from rtdenoise.stream import Service, control

pytestmark = pytest.mark.timeout(60)

ANY = "tcp://127.0.0.1:*"


def _engine(lag: int):
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=lag, floor=1.0, horizon=20)
    torch.manual_seed(0)
    net = cfg.build()
    with torch.no_grad():
        net.out.conv.weight.normal_(0.0, 0.2)  # a real correction, not the near-identity of a fresh model
    return load_engine(Checkpoint(f"tiny-imaging-lag{lag}", cfg, net.state_dict(), fs=30.0), backend="onnxruntime")


@pytest.fixture(scope="module")
def movie():
    rng = np.random.default_rng(0)
    return rng.poisson(rng.uniform(50, 400, (1, 48, 40)), (20, 48, 40)).astype(np.uint16)


def test_pycromanager_processor_returns_each_image_denoised_in_its_dtype_with_its_metadata(movie):
    eng = _engine(0)
    with Service(engine=eng, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc, \
            denoise_processor(svc.sub_address, svc.pub_address, stream="scope1", timeout_s=0.2) as fn:
        # as pycro-manager calls it: (image, metadata) in, (image, metadata) out; while the
        # connection comes up the raw image goes on, and the metadata says so
        warm = 0
        while True:
            img, md = fn(movie[0].copy(), {"Axes": {"time": -1}})
            if md["rtdenoise"]["denoised"]:
                break
            assert np.array_equal(img, movie[0]) and "rtdenoise serve" in md["rtdenoise"]["reason"]
            warm += 1
            assert warm < 200, "the service never answered"
            time.sleep(0.03)  # the next image comes a frame period later, as from a camera
        seen = control(svc.control_address, "status")["streams"]["scope1"]["frames_in"]  # warm-up copies it got
        out = []
        for t, frame in enumerate(movie):
            img, md = fn(frame, {"Axes": {"time": t}})
            assert md["Axes"] == {"time": t}, "the image's own metadata comes back"
            r = md["rtdenoise"]
            assert r["denoised"] and r["model"] == "tiny-imaging-lag0" and r["latency_ms"] > 0
            assert img.dtype == np.uint16 and img.shape == frame.shape
            out.append(img)
        assert fn.counts == {"denoised": len(movie) + 1, "raw": warm}
    ref = eng.run(np.concatenate([np.repeat(movie[:1], seen, 0), movie]))[seen:]
    assert np.abs(np.stack(out).astype(np.int64) - _as_dtype(ref, np.dtype(np.uint16))).max() <= 1  # rounding


def test_pycromanager_processor_never_stalls_the_acquisition(movie):
    # no service at all: the raw image goes on after the timeout
    with denoise_processor("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", timeout_s=0.1) as fn:
        t0 = time.monotonic()
        img, md = fn(movie[3], {})
        assert time.monotonic() - t0 < 1.0
        assert np.array_equal(img, movie[3]) and md["rtdenoise"]["denoised"] is False and "within 0.1 s" in md["rtdenoise"]["reason"]
        t0 = time.monotonic()  # after a timeout, images do not wait: acquisition keeps its pace
        for i in range(5):
            img, md = fn(movie[i], {})
            assert not md["rtdenoise"]["denoised"] and "not waited for" in md["rtdenoise"]["reason"]
        assert time.monotonic() - t0 < 0.1
        img, md = fn(movie[0, :10], {})  # a new image size mid-acquisition: the raw image goes on, not a crash
        assert img.shape == (10, 40) and "not sent" in md["rtdenoise"]["reason"]
    # a lookahead model cannot answer an image before the next ones: said at once, raw image on
    with Service(engine=_engine(2), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc, \
            denoise_processor(svc.sub_address, svc.pub_address, timeout_s=0.3) as fn:
        reasons = []
        for i in range(100):
            reasons.append(fn(movie[i % len(movie)], {})[1]["rtdenoise"].get("reason", ""))
            time.sleep(0.03)  # a camera's frame period
    assert "lookahead model (lag 2)" in reasons[-1] and fn.counts["denoised"] == 0  # once known, said at once
    with pytest.raises(ValueError, match="2-D"):
        denoise_processor("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")(movie[:2], {})
    with pytest.raises(ValueError, match="timeout_s"):
        denoise_processor(timeout_s=0)


def test_integer_output_is_rounded_and_clipped_to_the_camera_dtype():
    y = np.array([[-3.2, 0.4, 0.6, 70000.0]], np.float32)
    assert _as_dtype(y, np.dtype(np.uint16)).tolist() == [[0, 0, 1, 65535]]
    assert _as_dtype(y, np.dtype(np.uint8)).tolist() == [[0, 0, 1, 255]]
    assert _as_dtype(y, np.dtype(np.float32)).dtype == np.float32


def test_two_services_behind_proxies_each_take_their_rigs_and_one_consumer_gets_all(ck, noisy_frames):
    """Several rigs: frames fan in through one proxy, each service takes its rigs' prefix,
    outputs fan in through a second proxy to one consumer (the layout of rtdenoise.stream.proxy)."""
    import contextlib

    from rtdenoise.denoise import denoise
    from rtdenoise.stream import Publisher, Subscriber
    from rtdenoise.stream.proxy import Proxy

    x = noisy_frames(30)
    with Proxy(ANY, ANY) as frames_bus, \
            Service(model=ck, sub=frames_bus.addresses["xpub"], subscribe=("rigA",), pub=ANY, control="ipc://*") as a, \
            Service(model=ck, sub=frames_bus.addresses["xpub"], subscribe=("rigB",), pub=ANY, control="ipc://*") as b, \
            Proxy([a.pub_address, b.pub_address], ANY, connect_xsub=True) as outputs_bus, \
            Subscriber(outputs_bus.addresses["xpub"]) as consumer, \
            Publisher(frames_bus.addresses["xsub"][0], stream="rigA-1") as rig_a, \
            Publisher(frames_bus.addresses["xsub"][0], stream="rigB-1") as rig_b:
        deadline, seen = time.monotonic() + 15, set()
        while seen != {"rigA-1", "rigB-1"}:  # every hop's subscription has arrived
            assert time.monotonic() < deadline, f"only {seen} came through the proxies"
            rig_a.send(x[0], seq=0)
            rig_b.send(x[0], seq=0)
            with contextlib.suppress(TimeoutError):
                seen.add(consumer.recv(timeout=0.1)[0]["stream"])
        rig_a.send(x, seq=1000)  # a seq jump: a fresh context, as offline
        rig_b.send(x, seq=1000)
        got = {"rigA-1": [], "rigB-1": []}
        while any(sum(len(f) for f in v) < len(x) for v in got.values()):
            h, f = consumer.recv(timeout=10)
            if h["seq"] >= 1000:
                got[h["stream"]].append(np.array(f))
        # each service served only its own rigs
        assert set(control(a.control_address, "status")["streams"]) == {"rigA-1"}
        assert set(control(b.control_address, "status")["streams"]) == {"rigB-1"}
    ref = denoise(x, model=ck, chunk=len(x))
    for v in got.values():
        np.testing.assert_allclose(np.concatenate(v), ref, rtol=1e-5, atol=1e-4)


def test_cli_proxy_starts_says_where_and_stops_on_sigterm():
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "rtdenoise.cli", "proxy", "--xsub", ANY, "--xpub", ANY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rtdenoise proxy: ready xsub=tcp://127.0.0.1:") and " (bind) xpub=tcp://" in line, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def _scanimage_header(stream: str, seq: int, h: int, w: int, t_ns: int, fs: float) -> bytes:
    """The header as docs/integrations.md's MATLAB `rtd_header` packs it, byte for byte."""
    import struct

    def s(x: str) -> bytes:
        return bytes([0xA0 + len(x)]) + x.encode()

    return (b"\x88" + s("v") + b"\x01" + s("stream") + s(stream) + s("seq") + b"\xcf" + seq.to_bytes(8, "big")
            + s("n") + b"\x01" + s("shape") + b"\x92\xcd" + h.to_bytes(2, "big") + b"\xcd" + w.to_bytes(2, "big")
            + s("dtype") + s("<u2") + s("t_ns") + b"\xcf" + t_ns.to_bytes(8, "big") + s("fs") + b"\xcb"
            + struct.pack(">d", fs))


def test_the_documented_scanimage_header_bytes_decode_and_a_live_service_takes_them(movie):
    import re
    from pathlib import Path

    import zmq

    from rtdenoise.stream import Subscriber, wire

    doc = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    block = re.search(r"```\n((?:[0-9a-f]{2}[ \n])+)```", doc)[1]
    hdr = _scanimage_header("scope1", 7, 512, 512, 1764000000000000000, 30.0)
    assert bytes.fromhex(block.replace("\n", " ")) == hdr, "docs/integrations.md's header bytes went stale"
    _, h, frames = wire.decode([b"frames/scope1", hdr, np.zeros((512, 512), "<u2").tobytes()])
    assert (h["seq"], h["shape"], h["dtype"], frames.shape) == (7, [512, 512], "<u2", (1, 512, 512))
    # and a running imaging service denoises frames sent that way
    H, W = movie.shape[1:]
    with Service(engine=_engine(0), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc, \
            Subscriber(svc.pub_address, streams="scope1") as sub:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        try:
            deadline, seq = time.monotonic() + 10, 0
            while True:
                assert time.monotonic() < deadline, "no denoised frame came back"
                pub.send_multipart([b"frames/scope1", _scanimage_header("scope1", seq, H, W, 10**18 + seq, 30.0),
                                    movie[seq % len(movie)].tobytes()])
                seq += 1
                try:
                    out, f = sub.recv(timeout=0.1)
                    break
                except TimeoutError:
                    pass
        finally:
            pub.close(linger=0)
        assert out["stream"] == "scope1" and f.shape == (1, H, W) and np.isfinite(f).all()
        assert svc.stats()["streams"]["scope1"]["rejected"] == 0
