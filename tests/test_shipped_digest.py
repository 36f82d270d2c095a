"""The shipped models' output on a fixed recording is bit-identical to a stored digest.

The digests in ``tests/data/shipped_digests.json`` were made before the modality-neutral
refactor (issue 9): any change to the model, front end or engines that alters a single bit
of a shipped model's output fails here. Regenerate only for a deliberate change of
behaviour: ``python tests/test_shipped_digest.py --write`` (and say why in the commit).

Bit-identity holds on one CPU kind and library build; the recording machine is stored
beside the digests so a mismatch on another machine can be told apart from a regression.
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
CASES = [(m, b, c) for m in ("spectral-lag0", "spectral-lag5") for b in ("torch", "onnxruntime") for c in (None, 1)]


def _key(model: str, backend: str, chunk: int | None) -> str:
    return f"{model}/{backend}" + ("" if chunk is None else f"/chunk{chunk}")


def _output(model: str, backend: str, chunk: int | None) -> np.ndarray:
    from rtdenoise.backends import load_engine

    x = np.load(RECORDING)
    return load_engine(model, backend=backend, threads=1).run(x, chunk=chunk)


def _digest(y: np.ndarray) -> str:
    assert y.dtype == np.float32
    return hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest()


@pytest.mark.parametrize("model,backend,chunk", [pytest.param(*c, id=_key(*c)) for c in CASES])
def test_shipped_model_output_is_bit_identical(model, backend, chunk):
    stored = json.loads(DIGESTS.read_text())
    key = _key(model, backend, chunk)
    y = _output(model, backend, chunk)
    assert y.shape == (300, 152)
    assert _digest(y) == stored["digests"][key], (
        f"{key} no longer gives the stored output (recorded on {stored['machine']}); "
        f"sum now {float(y.astype(np.float64).sum())!r}, stored {stored['sums'][key]!r}"
    )


def _write() -> None:
    if not RECORDING.exists():
        from rtdenoise.synth import simulate

        noisy = simulate(300, seed=0, photons=2000)["noisy"]
        np.save(RECORDING, np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))
    out = {"machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
           "digests": {}, "sums": {}}
    import torch

    out["machine"] += f" torch {torch.__version__}"
    for case in CASES:
        y = _output(*case)
        out["digests"][_key(*case)] = _digest(y)
        out["sums"][_key(*case)] = float(y.astype(np.float64).sum())
    DIGESTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
