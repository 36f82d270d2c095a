"""The C client example (examples/c, libzmq + msgpack-c) compiled and run against a real service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rtdenoise.denoise import denoise
from rtdenoise.stream import Service

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "c" / "rtdenoise_client.c"
W = 152


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc)")
    d = tmp_path_factory.mktemp("c")
    probe = d / "probe.c"
    probe.write_text("#include <zmq.h>\n#include <msgpack.h>\nint main(void){msgpack_sbuffer b; msgpack_sbuffer_init(&b);"
                     " msgpack_sbuffer_destroy(&b); return zmq_ctx_term(zmq_ctx_new());}\n")
    if subprocess.run([cc, str(probe), "-o", str(d / "probe"), "-lzmq", "-lmsgpackc"], capture_output=True).returncode:
        pytest.skip("libzmq and msgpack-c headers are not installed (apt install libzmq3-dev libmsgpack-dev)")
    exe = d / "rtdenoise_client"
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", str(EXAMPLE), "-o", str(exe), "-lzmq", "-lmsgpackc"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the example itself must build cleanly
    return exe


def test_c_client_publishes_uint16_spectra_and_gets_them_back_denoised_as_offline(client, ck, tmp_path):
    n = 60
    with Service(model=ck, sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*", control="ipc://*") as svc:
        out = tmp_path / "out.f32"
        r = subprocess.run([str(client), svc.sub_address, svc.pub_address, "rig-c", str(n), str(out)],
                           capture_output=True, text=True, timeout=60)
        st = svc.stats()["streams"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"received {n} of {n}" in r.stdout and "expected seq" not in r.stderr
    assert st["rig-c"]["frames_in"] == n and st["rig-c"]["dtype"] == "<u2" and st["rig-c"]["rejected"] == 0
    # the frames the C program sent: frame i, bin j = 200 + (7 i + 13 j) % 50
    i, j = np.meshgrid(np.arange(n), np.arange(W), indexing="ij")
    x = (200 + (7 * i + 13 * j) % 50).astype(np.uint16)
    got = np.fromfile(out, dtype="<f4").reshape(n, W)
    np.testing.assert_allclose(got, denoise(x, model=ck), rtol=1e-5, atol=1e-3)
