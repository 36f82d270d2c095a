"""Bonsai's recipe: the C# wire code in examples/bonsai/, compiled with Mono, against a live service.

`RtdenoiseWire.cs` packs the input header by hand and reads the service's output headers;
the Bonsai operators around it (`RtdenoiseOperators.cs`) need Bonsai, NetMQ and OpenCV.Net,
which do not run here. Skips without Mono's C# compiler (`apt install mono-mcs`; `.ci/run`
installs it where it can).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from rtdenoise.stream import Service

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not (shutil.which("mcs") and shutil.which("mono")),
                                 reason="needs Mono's C# compiler and runtime (apt install mono-mcs)")]

ROOT = Path(__file__).resolve().parents[1]
ANY = "tcp://127.0.0.1:*"


@pytest.fixture(scope="module")
def wire_check(tmp_path_factory):
    """``wire_check(*args) -> stdout`` of tests/data/RtdenoiseWireCheck.cs built with RtdenoiseWire.cs."""
    exe = tmp_path_factory.mktemp("bonsai") / "wirecheck.exe"
    subprocess.run(["mcs", "-warnaserror", f"-out:{exe}", str(ROOT / "examples/bonsai/RtdenoiseWire.cs"),
                    str(ROOT / "tests/data/RtdenoiseWireCheck.cs")], check=True, capture_output=True, text=True)
    return lambda *args: subprocess.run(["mono", str(exe), *map(str, args)], check=True, capture_output=True,
                                        text=True).stdout


def test_the_csharp_header_is_the_documented_one(wire_check):
    doc = (ROOT / "docs" / "integrations.md").read_text()
    block = re.search(r"```\n((?:[0-9a-f]{2}[ \n])+)```", doc)[1]
    got = wire_check("header", "scope1", 7, 512, 512, 1764000000000000000, 30, "<u2")
    assert bytes.fromhex(got) == bytes.fromhex(block.replace("\n", " "))


def test_frames_packed_in_csharp_come_back_denoised_and_csharp_reads_the_headers(wire_check, tmp_path):
    from test_integrations import _engine  # the tiny imaging model

    rng = np.random.default_rng(0)
    movie = rng.poisson(rng.uniform(50, 400, (1, 36, 44)), (12, 36, 44)).astype(np.uint16)
    h, w = movie.shape[1:]
    headers = [bytes.fromhex(x) for x in wire_check("header", "scope1", 0, h, w, 10**18, 30, "<u2", 60).splitlines()]
    eng = _engine(0)
    with Service(engine=eng, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        ctx = zmq.Context.instance()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"denoised/scope1")
        sub.connect(svc.pub_address)
        pub.connect(svc.sub_address)
        try:
            first, deadline = None, time.monotonic() + 20
            while first is None:  # slow joiner: frames until one comes back; then the rest of the movie
                assert time.monotonic() < deadline, "no denoised frame came back"
                pub.send_multipart([b"frames/scope1", headers[0], movie[0].tobytes()])
                if sub.poll(100):
                    first = sub.recv_multipart()
            got = []
            for seq in range(len(movie)):  # from seq 0 again (a restart: a fresh context), the movie
                pub.send_multipart([b"frames/scope1", headers[seq], movie[seq].tobytes()])
                assert sub.poll(5000), f"frame {seq} did not come back"
                got.append(sub.recv_multipart())
        finally:
            pub.close(linger=0)
            sub.close(linger=0)
        assert svc.stats()["streams"]["scope1"]["rejected"] == 0
    out = np.stack([np.frombuffer(parts[2], "<f4").reshape(h, w) for parts in got])
    np.testing.assert_allclose(out, eng.run(movie), rtol=0, atol=1e-3)
    for parts in (first, got[0], got[-1]):  # the C# reader sees what msgpack sees
        (tmp_path / "h.bin").write_bytes(parts[1])
        fields = dict(line.split("=", 1) for line in wire_check("read", tmp_path / "h.bin").splitlines())
        want = msgpack.unpackb(parts[1])
        assert sorted(fields) == sorted(want)
        assert fields["stream"] == "scope1" and int(fields["seq"]) == want["seq"] and fields["dtype"] == "<f4"
        assert fields["shape"] == f"[{h},{w}]" and fields["warm"] == str(want["warm"]).lower()
        assert int(fields["t_ns"]) == want["t_ns"] and int(fields["gap"]) == want["gap"]
