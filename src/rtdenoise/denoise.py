"""Offline denoising: whole recordings or files through the same engine the service uses."""

from __future__ import annotations

import os

import numpy as np


def denoise(
    frames: np.ndarray,
    *,
    model=None,
    backend: str = "torch",
    chunk: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Denoise a recording offline.

    Parameters
    ----------
    frames : array (T, W)
        Time first, counts (any integer or float dtype).
    model : Checkpoint, str, path or None
        A checkpoint, a shipped model name, or a ``.pt`` path; None = the shipped default.
    backend : {"torch", "onnxruntime", "tensorrt", "auto"}
    chunk : int, optional
        Frames per engine step: ``chunk=1`` is exactly what the live service does frame by
        frame. Any value gives the same output; memory is bounded by it (default 1024).

    Returns
    -------
    array (T, W) float32
        One output frame per input frame. With a lookahead model (lag k) the last k frames
        are computed by repeating the last frame, since their future never arrives.

    Examples
    --------
    >>> from rtdenoise.synth import simulate
    >>> rec = simulate(200, seed=0, photons=2000)
    >>> denoise(rec["noisy"]).shape
    (200, 152)
    """
    from rtdenoise.backends import Engine, load_engine

    engine = model if isinstance(model, Engine) else load_engine(model, backend=backend)
    return engine.run(frames, chunk=chunk, progress=progress)


def denoise_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model=None,
    backend: str = "torch",
    chunk: int | None = None,
    key: str | None = None,
    progress: bool = True,
) -> dict:
    """Read ``src``, denoise, write ``dst`` atomically (never half-written). Returns a summary."""
    import time

    from rtdenoise.backends import load_engine
    from rtdenoise.io import load_frames, save_frames, validate_frames

    engine = load_engine(model, backend=backend)  # bad model or backend fails before reading
    frames = load_frames(src, key=key)
    validate_frames(frames, frame_shape=engine.frame_shape, name=str(src))
    if np.issubdtype(frames.dtype, np.integer) and frames.dtype.itemsize >= 8:
        if np.abs(frames).max() > 2**53:
            raise ValueError(f"{src}: integer counts above 2**53 cannot be represented exactly; check the file")
    t0 = time.perf_counter()
    out = engine.run(frames, chunk=chunk, progress=progress)
    wall = time.perf_counter() - t0
    save_frames(dst, out, key="denoised")
    return {
        "input": str(src),
        "output": str(dst),
        "frames": int(frames.shape[0]),
        "model": engine.name,
        "backend": engine.backend,
        "lag": engine.lag,
        "seconds": wall,
        "ms_per_frame": 1e3 * wall / max(1, frames.shape[0]),
    }
