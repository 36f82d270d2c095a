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
    follow_motion: bool | None = None,
) -> np.ndarray:
    """Denoise a recording offline.

    Parameters
    ----------
    frames : array (T, W) or (T, H, W)
        Time first, counts (any integer or float dtype): spectra or a movie.
    model : Checkpoint, str, path or None
        A checkpoint, a shipped model name, or a ``.pt`` path; None = the shipped default
        for the frames (``spectral-lag0`` for spectra, ``imaging-lag0`` for movies).
    backend : {"torch", "onnxruntime", "tensorrt", "auto"}
    chunk : int, optional
        Frames per engine step: ``chunk=1`` is exactly what the live service does frame by
        frame. Any value gives the same output; memory is bounded by it (default 1024).
    follow_motion : bool, optional
        Movies: the model's front end follows the field of view's rigid motion, or not,
        whatever its checkpoint says (None: as it says). The shipped imaging models do.

    Returns
    -------
    array (T, W) or (T, H, W) float32
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
    from rtdenoise.model.checkpoint import default_model

    if model is None:
        model = default_model(max(1, np.ndim(frames) - 1))  # a 1-D array gets the spectral error
    if isinstance(model, Engine):
        if follow_motion is not None and follow_motion != model.config.register:
            raise ValueError("follow_motion cannot change an engine already made; give the model instead")
        engine = model
    else:
        engine = load_engine(model, backend=backend, follow_motion=follow_motion)
    return engine.run(frames, chunk=chunk, progress=progress)


def denoise_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model=None,
    backend: str = "torch",
    chunk: int | None = None,
    key: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    follow_motion: bool | None = None,
) -> dict:
    """Read ``src``, denoise, write ``dst`` atomically (never half-written). Returns a summary.

    The file goes through block by block (:mod:`rtdenoise.blocks`): ``.npy``, TIFF stacks and
    HDF5 larger than memory are read and written a block at a time, with the causal state
    carried across blocks, so the result equals one pass. ``dtype``: ``"float32"`` (the
    default) or ``"input"``, the input's own type (integers rounded and clipped to its range).
    ``follow_motion``: as in :func:`denoise`.
    """
    import time

    from tqdm import tqdm

    from rtdenoise.backends import load_engine
    from rtdenoise.blocks import frame_writer, open_frames
    from rtdenoise.io import validate_frames
    from rtdenoise.model.checkpoint import default_model

    if dtype not in ("float32", "input"):
        raise ValueError(f"dtype must be 'float32' or 'input', got {dtype!r}")
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"the output {dst} is the input {src} itself: writing it would replace the recording; "
                         "write the denoised frames to another file")
    engine = None if model is None else load_engine(model, backend=backend, follow_motion=follow_motion)  # bad model or backend: before reading
    with open_frames(src, key=key) as reader:
        probe = np.zeros((1, *reader.shape[1:]), reader.dtype)  # one frame: the shape and type, before any work
        validate_frames(probe, name=str(src))  # a colour movie, a dtype: before a model is picked for it
        if engine is None:  # the shipped default for these frames: spectra or images
            engine = load_engine(default_model(len(reader.shape) - 1), backend=backend, follow_motion=follow_motion)
        validate_frames(probe, frame_shape=engine.frame_shape, name=str(src))  # the shape
        engine.check_shape(reader.shape[1:])
        if np.issubdtype(reader.dtype, np.integer) and reader.dtype.itemsize >= 8:
            raise ValueError(f"{src}: 64-bit integer counts; convert to float64 or a smaller integer type first")
        out_dtype = reader.dtype if dtype == "input" else np.dtype(np.float32)
        block = chunk or engine.max_step(reader.shape[1:])
        t0 = time.perf_counter()
        with frame_writer(dst, len(reader), reader.shape[1:], out_dtype, key="denoised", source=reader,
                          description=_description(engine)) as writer, \
                tqdm(total=len(reader), disable=not progress, unit="frame", dynamic_ncols=True) as bar:
            for y in engine.denoise_blocks(_checked(reader.blocks(block), str(src)), chunk=chunk, checked=True):
                writer.write(_as(y, out_dtype))
                bar.update(len(y))
        wall = time.perf_counter() - t0
    return {
        "input": str(src),
        "output": str(dst),
        "frames": len(reader),
        "model": engine.name,
        "backend": engine.backend,
        "lag": engine.lag,
        "dtype": str(out_dtype),
        "seconds": wall,
        "ms_per_frame": 1e3 * wall / max(1, len(reader)),
    }


def _checked(blocks, name: str):
    """``blocks`` of a recording ``name``, each checked for NaN/inf and absurd values as it is
    read: an error gives the frame's index in the whole file, not in its block."""
    from rtdenoise.backends.base import check_values

    start = 0
    for b in blocks:
        check_values(b[None], name=name, start=start)  # (1, n, *frame)
        start += len(b)
        yield b


def _description(engine) -> str:
    """What a denoised series says of its making (NWB): the model, its card's facts, the tool."""
    from rtdenoise import __version__

    prov = engine.checkpoint.provenance or {}
    facts = [f"model {engine.name!r}", f"lag {engine.lag} frames", f"backend {engine.backend}"]
    if prov.get("command"):
        facts.append(f"trained with `{prov['command']}`")
    if prov.get("steps"):
        facts.append(f"{prov['steps']} steps")
    if prov.get("date"):
        facts.append(f"on {prov['date']}")
    return (f"Denoised by rtdenoise {__version__} (causal CNN, each output frame from that frame and earlier ones"
            + (f" and {engine.lag} later" if engine.lag else "") + "): " + ", ".join(facts)
            + f"; model card: models/{engine.name}.md in the rtdenoise repository, when it is a shipped model.")


def _as(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Denoised float32 frames in ``dtype``: integers rounded and clipped to its range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype, copy=False)
