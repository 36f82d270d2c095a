"""The shipped models' output on a fixed recording matches what is stored.

On the machine kind the digests in ``tests/data/shipped_digests.json`` were recorded on (CPU
model and library versions, stored beside them), the output must be bit-identical: any
change to the model, front end or engines that alters a single bit fails here. On another
machine kind the bits may differ (the first digests, recorded on another machine, missed
this machine's output by 3e-5 of its sum at the very commit that recorded them), so there
the output's per-frame sums must match the stored ones to 1e-4 instead: a change of
behaviour still fails, a different CPU does not.

Regenerate only for a deliberate change of behaviour or of CI's machine kind:
``python tests/test_shipped_digest.py --write`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
RECORDING = DATA / "fixed_recording.npy"  # (300, 152) uint16 counts, seed 0 at 2000 photons
DIGESTS = DATA / "shipped_digests.json"
# (model, backend, chunk): whole-recording steps, and frame by frame as the live service steps.
CASES = [(m, b, c) for m in ("spectral-lag0", "spectral-lag5", "spectral-sensor-lag0") for b in ("torch", "onnxruntime")
         for c in (None, 1)]
FRAME_SUM_RTOL = 1e-4


def _key(model: str, backend: str, chunk: int | None) -> str:
    return f"{model}/{backend}" + ("" if chunk is None else f"/chunk{chunk}")


def _machine() -> str:
    """CPU model and the libraries whose kernels make the bits."""
    import onnxruntime
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{platform.machine()} {cpu} python {platform.python_version()} torch {torch.__version__} "
            f"numpy {np.__version__} onnxruntime {onnxruntime.__version__}")


def _output(model: str, backend: str, chunk: int | None) -> np.ndarray:
    from rtdenoise.backends import load_engine
    from rtdenoise.model.checkpoint import load

    x = np.load(RECORDING)
    ck = load(model)
    if ck.config.sensor is not None:  # a model that takes its sensor's spectrum: the recording's own
        from rtdenoise.synth import simulate

        rec = simulate(1, seed=0, photons=2000)  # the recording's draw (its spectra come before its frames)
        ck = ck.for_sensor(rec["emission"] * rec["signature"])
    return load_engine(ck, backend=backend, threads=1).run(x, chunk=chunk)


def _digest(y: np.ndarray) -> str:
    assert y.dtype == np.float32
    return hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest()


def _frame_sums(y: np.ndarray) -> list[float]:
    return y.astype(np.float64).sum(axis=1).tolist()


@pytest.mark.parametrize("model,backend,chunk", [pytest.param(*c, id=_key(*c)) for c in CASES])
def test_shipped_model_output_matches_stored(model, backend, chunk):
    stored = json.loads(DIGESTS.read_text())
    key = _key(model, backend, chunk)
    y = _output(model, backend, chunk)
    assert y.shape == (300, 152)
    assert np.isfinite(y).all()
    if _machine() == stored["machine"]:
        assert _digest(y) == stored["digests"][key], (
            f"{key} no longer gives the stored output on the machine it was recorded on "
            f"({stored['machine']}); sum now {float(y.astype(np.float64).sum())!r}, stored {stored['sums'][key]!r}"
        )
    else:
        np.testing.assert_allclose(
            _frame_sums(y), stored["frame_sums"][key], rtol=FRAME_SUM_RTOL,
            err_msg=f"{key}: per-frame sums differ from those recorded on {stored['machine']} "
                    f"by more than another CPU explains (this machine: {_machine()})")


def _write() -> None:
    if not RECORDING.exists():
        from rtdenoise.synth import simulate

        noisy = simulate(300, seed=0, photons=2000)["noisy"]
        np.save(RECORDING, np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))
    out = {"machine": _machine(), "digests": {}, "sums": {}, "frame_sums": {}}
    for case in CASES:
        y = _output(*case)
        out["digests"][_key(*case)] = _digest(y)
        out["sums"][_key(*case)] = float(y.astype(np.float64).sum())
        out["frame_sums"][_key(*case)] = [round(s, 3) for s in _frame_sums(y)]
    DIGESTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("machine", "sums")}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
