"""Engines: one model behind torch, ONNX Runtime or TensorRT, picked by ``backend``."""

from __future__ import annotations

import os

from rtdenoise.backends.base import BACKENDS, Engine, StreamState

__all__ = ["BACKENDS", "Engine", "StreamState", "load_engine"]


def load_engine(model=None, *, backend: str = "torch", **kwargs) -> Engine:
    """An engine for ``model`` (a Checkpoint, a path, a shipped name, or None = default).

    A ``.onnx`` from ``rtdenoise export`` runs on onnxruntime (or tensorrt, or torch, which
    rebuilds the weights from it); a ``.plan`` from ``rtdenoise build-engine`` on tensorrt.

    ``backend``: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto`` (TensorRT on a GPU
    with TensorRT, else CUDA torch, else the fastest CPU backend measured for the model).
    Bad names and paths fail here, not at the first frame.
    """
    from rtdenoise.model.checkpoint import Checkpoint, load

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith((".onnx", ".plan")):
        # An exported graph or a TensorRT plan carries the model's metadata itself.
        from rtdenoise.backends.export import checkpoint_for_file

        ckpt, backend, kwargs = checkpoint_for_file(model, backend, kwargs)
    else:
        ckpt = model if isinstance(model, Checkpoint) else load(model)
    if backend == "auto":
        backend = _auto_backend(ckpt)
    if backend == "torch":
        from rtdenoise.backends.torch_engine import TorchEngine

        return TorchEngine(ckpt, **kwargs)
    if backend == "onnxruntime":
        from rtdenoise.backends.ort_engine import OrtEngine

        return OrtEngine(ckpt, **kwargs)
    from rtdenoise.backends.trt_engine import TrtEngine

    kwargs.pop("threads", None)  # a CPU setting; the GPU engine has none
    return TrtEngine(ckpt, **kwargs)


def _auto_backend(ckpt) -> str:
    import torch

    if torch.cuda.is_available():
        try:
            import tensorrt  # noqa: F401

            return "tensorrt"
        except ImportError:
            return "torch"
    return os.environ.get("RTDENOISE_CPU_BACKEND") or ckpt.metrics.get("fastest_cpu_backend", "torch")
