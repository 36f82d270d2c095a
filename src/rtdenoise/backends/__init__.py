"""Engines: one model behind torch, ONNX Runtime or TensorRT, picked by ``backend``.

Imports point one way: ``base`` (the interface) <- ``torch_engine``, ``ort_engine``,
``trt_engine`` <- this module's :func:`load_engine`; ``export`` (ONNX files) is used by the
ONNX Runtime and TensorRT engines and imports none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from rtdenoise.backends.base import BACKENDS, Engine, StreamState, auto_backend

__all__ = ["BACKENDS", "Engine", "StreamState", "auto_backend", "load_engine"]


def load_engine(model=None, *, backend: str = "torch", follow_motion: bool | None = None, **kwargs) -> Engine:
    """An engine for ``model`` (a Checkpoint, a path, a shipped name, or None = default).

    A ``.onnx`` from ``rtdenoise export`` runs on onnxruntime (or tensorrt, or torch, which
    rebuilds the weights from it); a ``.plan`` from ``rtdenoise build-engine`` on tensorrt.

    ``backend``: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto`` (see
    :func:`~rtdenoise.backends.base.auto_backend`). Bad names and paths fail here, not at
    the first frame.

    ``follow_motion``: an imaging model's front end follows the frame's rigid motion (True)
    or not (False), whatever its checkpoint says (None: as it says; see
    :func:`rtdenoise.model.frontend.follow_motion`). Checkpoints only: an exported file
    keeps the setting it was exported with.
    """
    from rtdenoise.model.checkpoint import Checkpoint, load

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith((".onnx", ".plan")):
        # An exported graph or a TensorRT plan carries the model's metadata itself.
        if follow_motion is not None:
            raise ValueError(f"{os.fspath(model)} is an exported file: it keeps the motion following it was exported "
                             "with; give the checkpoint (.pt) to change it, or re-export one with it changed")
        ckpt, backend, kwargs = _checkpoint_for_file(Path(model), backend, dict(kwargs))
    else:
        ckpt = model if isinstance(model, Checkpoint) else load(model)
        if follow_motion is not None:
            ckpt = ckpt.following_motion(follow_motion)
        if backend == "auto":
            backend = auto_backend(ckpt)
    if backend == "torch":
        from rtdenoise.backends.torch_engine import TorchEngine

        return TorchEngine(ckpt, **kwargs)
    if backend == "onnxruntime":
        from rtdenoise.backends.ort_engine import OrtEngine

        return OrtEngine(ckpt, **kwargs)
    from rtdenoise.backends.trt_engine import TrtEngine

    kwargs.pop("threads", None)  # a CPU setting; the GPU engine has none
    return TrtEngine(ckpt, **kwargs)


def _checkpoint_for_file(p: Path, backend: str, kwargs: dict):
    """A ``.onnx`` or TensorRT ``.plan`` path -> (checkpoint, backend, engine kwargs).

    ``.onnx``: ONNX Runtime or TensorRT run it as is; torch rebuilds the weights from it.
    ``.plan``: TensorRT only; the model metadata comes from the plan's ``.json`` sidecar.
    """
    from rtdenoise.backends.export import checkpoint_from_onnx

    if p.suffix == ".plan":
        if backend not in ("auto", "tensorrt"):
            raise ValueError(f"{p} is a TensorRT plan; load it with backend='tensorrt', not {backend!r}")
        from rtdenoise.backends.trt_engine import checkpoint_from_plan

        kwargs.setdefault("plan_path", str(p))
        return checkpoint_from_plan(p), "tensorrt", kwargs
    if backend == "auto":
        backend = auto_backend(None, exported=True)
    if backend in ("onnxruntime", "tensorrt"):
        kwargs.setdefault("onnx_path", str(p))
        return checkpoint_from_onnx(p, weights=False), backend, kwargs
    return checkpoint_from_onnx(p, weights=True), backend, kwargs
