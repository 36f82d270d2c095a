"""The engine interface: one model behind torch, ONNX Runtime or TensorRT.

An engine owns the network; a :class:`StreamState` owns everything one set of streams has
seen (the front end's running statistics, the network's per-layer past rows, the last
frame). A step takes a chunk of ``n >= 1`` new frames per stream and returns ``n``
denoised frames, ``lag`` frames behind: the first ``lag`` outputs of a fresh stream belong
to frames before it started and are for the caller to drop. :meth:`Engine.flush` ends a
stream (end of file, a gap, a restarted acquisition): it returns the outputs still owed
for its last ``lag`` frames and resets it.

Subclasses implement ``_new_net_state(batch, frame)`` and ``_net_step(feat, net_state)``; the
front end runs on the host in numpy for every backend, so all of them share it (CUDA torch
moves a per-pixel front end onto the GPU by overriding ``_allocate`` and ``_advance``). This
module imports neither torch nor a runtime: ``BACKENDS`` is cheap to import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rtdenoise.model.checkpoint import Checkpoint
    from rtdenoise.model.frontend import FrontEnd

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
MAX_COUNT = float(2**32)  # |value| of a frame sample at most: a 32-bit detector's full range. Beyond it the
# front end's float32 statistics and the network's state can overflow to inf and poison the stream.


class ValueRangeError(ValueError):
    """Finite frame values beyond :data:`MAX_COUNT`: refused before they reach any state."""


def check_values(a: np.ndarray, *, name: str | None = None, start: int = 0) -> None:
    """Raise ValueError for NaN/inf and :class:`ValueRangeError` for finite values beyond
    ±:data:`MAX_COUNT` in frames ``a`` (B, n, *frame) or (n, *frame); nothing was processed.
    ``name``: the recording ``a`` is read from, ``start`` the index of its first frame there
    (the message then gives the frame's index in the whole recording and the fix)."""
    if not (np.issubdtype(a.dtype, np.floating) or a.dtype.itemsize >= 8):  # smaller integers cannot exceed it
        return
    ok = np.abs(a) <= MAX_COUNT  # False for NaN and inf too: one pass for both checks
    if ok.all():
        return
    bad = ~ok
    first = start + int(np.argwhere(bad)[0, 1 if a.ndim > 2 else 0])
    nan = np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()
    if name is not None:  # a file read in blocks: where in it, not in the block (whose count is partial)
        raise (ValueError if nan else ValueRangeError)(
            f"{name} contains {'NaN/inf values' if nan else f'values beyond ±{MAX_COUNT:.3g} counts'}, the first in "
            f"frame {first} (counting from 0); "
            + ("interpolate over them or drop those frames first" if nan else "check the recording's units"))
    if nan:
        raise ValueError(f"frames contain {int((~np.isfinite(a)).sum())} NaN/inf values (first in frame {first} of the "
                         "chunk); nothing was processed")
    raise ValueRangeError(f"frames contain {int(bad.sum())} values beyond ±{MAX_COUNT:.3g} counts (first in frame {first} "
                          "of the chunk), more than any detector counts and than the model's normalization takes; "
                          "nothing was processed")


MAX_STEP_FRAMES = 1024  # most frames per step offline and in the service ...
MAX_STEP_VALUES = 2**21  # ... and most values: 8 frames of 512 x 512 (the front end works in float64)
MAX_CHUNK_SHAPES = 8  # per-chunk-length buffers an engine keeps per state (chunk lengths are usually few)


def auto_backend(checkpoint: Checkpoint, *, exported: bool = False) -> str:
    """The backend ``auto`` stands for: TensorRT on a GPU with TensorRT, else CUDA torch
    (ONNX Runtime for an exported ``.onnx``), else the fastest CPU backend measured for the
    model (``RTDENOISE_CPU_BACKEND`` overrides it)."""
    import torch

    if torch.cuda.is_available():
        try:
            import tensorrt  # noqa: F401

            return "tensorrt"
        except ImportError:
            pass
        if not exported:
            return "torch"
    if exported:
        return "onnxruntime"  # an exported graph runs as it is
    return os.environ.get("RTDENOISE_CPU_BACKEND") or checkpoint.metrics.get("fastest_cpu_backend", "torch")


class PerChunk(dict):
    """Buffers keyed by chunk length, made on first use; forgets all past ``MAX_CHUNK_SHAPES``."""

    def get_or_make(self, n: int, make):
        if n not in self:
            if len(self) >= MAX_CHUNK_SHAPES:
                self.clear()
            self[n] = make()
        return self[n]


@dataclass
class StreamState:
    """The past of ``batch`` streams: front-end statistics, network rows, the last frame.

    For a model that takes frames of any size (images), the front end and the network
    rows are allocated at the first step, for the shape of its frames (``shape``); every
    later chunk must have that shape until the state is made anew.
    """

    frontend: FrontEnd | None
    net: Any  # backend-specific: named tensors/arrays, allocated once, updated in place
    batch: int
    seen: np.ndarray = field(default=None)  # frames stepped per stream since the last reset
    last: np.ndarray | None = None  # (batch, *frame) float64, the last frame stepped (lag > 0): what a flush repeats
    shape: tuple[int, ...] | None = None  # the frames' shape, once known

    def __post_init__(self):
        if self.seen is None:
            self.seen = np.zeros(self.batch, dtype=np.int64)


HEAP_KEEP_BYTES = 32 << 20  # blocks below this come from the heap, and up to 8x it of free heap is kept


def keep_heap() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back.

    A step's temporaries at 512 x 512 are megabyte arrays. By default glibc maps each one
    fresh (or trims the heap under it once freed), so every step faults its pages in again:
    the front end of a 512 x 512 frame that follows motion took 11 ms a step that way and
    5 ms with this (``benchmarks/results/host_heap.md``). The cost is memory: up to
    ``8 × HEAP_KEEP_BYTES`` of freed heap stays with the process. Process-wide, once; a
    no-op off glibc or with ``RTDENOISE_KEEP_HEAP=0`` in the environment. Every
    :class:`Engine` calls it. Returns whether it took effect.
    """
    global _HEAP_KEPT
    if _HEAP_KEPT is None:
        _HEAP_KEPT = False
        if os.environ.get("RTDENOISE_KEEP_HEAP", "1") == "0":
            return False
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
            _HEAP_KEPT = bool(libc.mallopt(m_mmap_threshold, HEAP_KEEP_BYTES)
                              and libc.mallopt(m_trim_threshold, 8 * HEAP_KEEP_BYTES))
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
            pass
    return _HEAP_KEPT


_HEAP_KEPT: bool | None = None


class Engine:
    """A model ready to step streams. Use :func:`rtdenoise.backends.load_engine` to get one."""

    backend = "base"
    gpu = False  # steps on a GPU: the service warms it up at start and never keeps it busy while idle

    def __init__(self, checkpoint: Checkpoint):
        if checkpoint.config.sensor == []:  # fail here, not at a stream's first frame
            raise ValueError(f"model {checkpoint.name!r} takes its sensor's emission spectrum and has none: give it "
                             "once with `rtdenoise set-sensor MODEL SPECTRUM -o OUT` (or Checkpoint.for_sensor)")
        keep_heap()
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.frame_shape = checkpoint.frame_shape
        self.lag = checkpoint.lag
        self.receptive_field = checkpoint.receptive_field
        self.name = checkpoint.name
        self.family = checkpoint.config.family

    # -- backend hooks -----------------------------------------------------------------
    def _new_net_state(self, batch: int, frame: tuple[int, ...]) -> Any:
        """Zeroed network rows for ``batch`` streams of frames of shape ``frame``."""
        raise NotImplementedError

    def _net_step(self, feat: np.ndarray, net_state: Any) -> np.ndarray:
        """(B, n, F) float32 features -> (B, n, C) float32; updates ``net_state`` in place."""
        raise NotImplementedError

    def _reset_net(self, net_state: Any, index: int | None) -> None:
        """Zero the rows of stream ``index`` (all if None), in place: addresses never move.

        Works for a mapping of numpy arrays or torch tensors; other states override it."""
        sl = slice(None) if index is None else index
        for v in net_state.values():
            v[sl] = 0

    def state_shapes(self, batch: int, frame: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The network state's arrays for ``batch`` streams of frames of shape ``frame``, by name."""
        return self.layout.state_shapes(batch, frame)

    @property
    def layout(self):
        """The network's layer structure (for state names and shapes); engines that run a graph
        build it once with random weights, which are never used."""
        if getattr(self, "_layout", None) is None:
            self._layout = self.config.build()
        return self._layout

    def _check_exported(self, meta: dict, source) -> None:
        """An exported graph or plan must come from this engine's model config."""
        from rtdenoise.model.config import ModelConfig

        made = meta["checkpoint"]["config"]
        try:  # an export from before a config field was added has it at its default
            made = ModelConfig.from_dict(made).to_dict()
        except (ValueError, TypeError):
            pass
        if made != self.config.to_dict():
            raise ValueError(
                f"{source or 'the exported graph'} was made from a model with another config than {self.name!r}; "
                "export or build it again from this checkpoint (`rtdenoise export`, `rtdenoise build-engine`)"
            )

    # -- public API ----------------------------------------------------------------------
    def new_state(self, batch: int = 1, frame: tuple[int, ...] | None = None) -> StreamState:
        """State for ``batch`` streams stepped together, as if each had just started.

        ``frame``: the shape of their frames, for a model that takes any size (images);
        without it the state is allocated at the first step.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1 stream, got {batch}")
        state = StreamState(None, None, batch)
        if frame is None and None not in self.frame_shape:
            frame = self.frame_shape
        if frame is not None:
            self._allocate(state, self.check_shape(tuple(frame)))
        return state

    def _allocate(self, state: StreamState, frame: tuple[int, ...]) -> None:
        state.frontend = self.config.frontend(state.batch, frame)
        state.net = self._new_net_state(state.batch, frame)
        state.last = np.zeros((state.batch, *frame))  # written in place at every step
        state.shape = frame

    def slot(self, state: StreamState, index: int) -> StreamState:
        """Stream ``index`` of ``state`` as a one-stream state whose arrays are views of that
        stream's rows: stepping, flushing or resetting the slot changes that stream of
        ``state`` and no other, and stepping ``state`` advances the slot too. The service
        keeps each stream's state this way, so a stream can be stepped alone or with others
        in one call (:mod:`rtdenoise.stream.batch`)."""
        if state.net is None:
            raise ValueError("a slot needs an allocated state: new_state(batch, frame)")
        if not 0 <= index < state.batch:
            raise IndexError(f"slot {index} of a state of {state.batch} streams")
        sl = slice(index, index + 1)
        return StreamState(state.frontend.view(index), self._view_net(state.net, index), 1,
                           seen=state.seen[sl], last=state.last[sl], shape=state.shape)

    def slot_limit(self, frame: tuple[int, ...]) -> int | None:
        """Most streams of frames of shape ``frame`` one state may hold as slots (None: any)."""
        return None

    def slot_arrays(self, state: StreamState) -> list:
        """Every array of ``state`` that holds rows per stream, stream first (numpy arrays or
        torch tensors): what saving and restoring one stream's past copies."""
        return [*state.frontend.arrays(), *self._net_arrays(state.net), state.seen, state.last]

    def _view_net(self, net_state: Any, index: int) -> Any:
        """The network rows of stream ``index`` as views, a state of the same kind (works for a
        mapping of numpy arrays or torch tensors; other states override it)."""
        return type(net_state)({k: v[index : index + 1] for k, v in net_state.items()})

    def _net_arrays(self, net_state: Any) -> list:
        return list(net_state.values())

    def max_step(self, frame: tuple[int, ...]) -> int:
        """Most frames of shape ``frame`` per engine step: bounded memory for any frame size."""
        return max(1, min(MAX_STEP_FRAMES, MAX_STEP_VALUES // max(1, int(np.prod(frame)))))

    def reset(self, state: StreamState, index: int | None = None) -> None:
        """Forget the past of stream ``index`` of ``state`` (every stream if None)."""
        if state.net is None:  # never stepped: nothing to forget
            return
        state.frontend.reset(index)
        self._reset_net(state.net, index)
        state.seen[slice(None) if index is None else index] = 0

    def check_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``shape`` if frames of it fit this model, else ValueError with the fix."""
        w = self.frame_shape
        if len(shape) != len(w) or any(d is not None and d != g for d, g in zip(w, shape)):
            self._shape_error(shape)
        self.family.check_frame_shape(self.config, shape)
        return shape

    def _shape_error(self, shape: tuple[int, ...]):
        w = self.frame_shape
        if self.checkpoint.modality == "imaging":
            raise ValueError(
                f"model {self.name!r} denoises images (frames (H, W); movies (T, H, W)), got frames of shape {shape}; "
                "a colour image or a spectrum needs another model"
            )
        raise ValueError(
            f"expected frames of shape {w} (chunks (n, {w[0]}) or (streams, n, {w[0]})), got {shape}; "
            f"is this the model for this spectrometer? model {self.name!r} was trained for {w[0]} bins; "
            "retrain for this instrument or pick another model"
        )

    def check_frames(self, frames: np.ndarray, *, batch: int | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Validate a chunk and return it as (B, n, *frame); raise ValueError/TypeError with the fix.

        ``shape``: the frame shape the stream started with, if any (a state's ``shape``).
        """
        a = np.asarray(frames)
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(f"frames must be integer or float counts, got dtype {a.dtype}")
        rank = len(self.frame_shape)
        if a.ndim == rank + 1:
            a = a[None]
        if a.ndim != rank + 2:
            self._shape_error(a.shape)
        if a.shape[2:] != self.frame_shape:  # a fixed shape that matches needs nothing more
            self.check_shape(a.shape[2:])
        if shape is not None and a.shape[2:] != tuple(shape):
            raise ValueError(f"frames of shape {a.shape[2:]}, but the stream started with {tuple(shape)}; "
                             "a new frame size is a new stream")
        if a.shape[1] == 0:
            raise ValueError("a chunk must hold at least 1 frame, got 0")
        if batch is not None and a.shape[0] != batch:
            raise ValueError(f"chunk has {a.shape[0]} streams, the state holds {batch}")
        check_values(a)
        return a

    def step(self, frames: np.ndarray, state: StreamState, *, checked: bool = False) -> np.ndarray:
        """Advance by a chunk and return the denoised frames ``lag`` behind, float32.

        ``frames``: (n, *frame) for a single-stream state, or (B, n, *frame). Returns the
        same shape. A bad chunk raises before any state changes. ``checked=True`` skips the
        validation for a caller that has already passed the chunk through
        :meth:`check_frames` (the service does, as each message arrives).
        """
        single = np.ndim(frames) == len(self.frame_shape) + 1
        if checked:
            x = np.asarray(frames)
            x = x[None] if single else x
        else:
            x = self.check_frames(frames, batch=state.batch, shape=state.shape)
        if state.net is None:
            self._allocate(state, x.shape[2:])
        y = self._advance(x, state)
        state.seen += x.shape[1]
        if self.lag:  # only a flush of a lagged model repeats it (16 frames of 512 x 512: 4 ms on a GPU's host)
            np.copyto(state.last, x[:, -1])
        return y[0] if single else y

    def _advance(self, x: np.ndarray, state: StreamState) -> np.ndarray:
        """Front end, network, back to counts: checked frames (B, n, *frame) -> float32 outputs."""
        norm = state.frontend.normalize(x)
        out = self._net_step(norm.features, state.net)
        return state.frontend.to_counts(out, norm).astype(np.float32, copy=False)

    def flush(self, state: StreamState, frames: np.ndarray | None = None, *, chunk: int | None = None):
        """End the streams of ``state``: step their last ``frames`` (if given), return every
        output still owed, and reset them.

        A lag-``k`` model owes the outputs of each stream's last ``k`` frames (fewer if it
        saw fewer); they are computed as an offline pass ends a recording, by stepping the
        last frame ``k`` more times (its future never arrives). ``frames`` and that padding
        are stepped as one sequence, ``chunk`` frames per step (None: one step).

        Returns ``(m, *frame)`` float32 for a single-stream state, ``(B, m, *frame)``
        otherwise: the outputs of ``frames`` followed by the owed ones, less any that belong
        to frames before the stream started. With ``lag = 0`` and no ``frames``, ``m = 0``.
        """
        if frames is None:
            return self._end(state, None, chunk)
        single = np.ndim(frames) == len(self.frame_shape) + 1
        y = self._end(state, self.check_frames(frames, batch=state.batch, shape=state.shape), chunk)
        return y[0] if single else y

    def _end(self, state: StreamState, x: np.ndarray | None, chunk: int | None):
        """:meth:`flush` of checked frames ``x`` (B, n, *frame) or None."""
        n = 0 if x is None else x.shape[1]
        shape = state.shape if x is None else x.shape[2:]
        if n == 0 and not state.seen.any():  # nothing stepped since the reset: nothing owed
            y = np.empty((state.batch, 0, *(shape or ())), dtype=np.float32)
        else:
            last = x[:, -1] if n else state.last
            seq = np.repeat(last[:, None], self.lag, axis=1)  # (B, lag, *frame)
            if n:
                seq = np.concatenate([x, seq], axis=1)
            if seq.shape[1]:
                step = chunk or seq.shape[1]
                y = np.concatenate([self.step(seq[:, i : i + step], state, checked=True)
                                    for i in range(0, seq.shape[1], step)], axis=1)
            else:
                y = np.empty((state.batch, 0, *shape), dtype=np.float32)
        # Rows for frames before the start: the first lag - seen of them (the same for every
        # stream of a state stepped together).
        seen = int(state.seen.min()) - y.shape[1]
        y = y[:, max(0, self.lag - seen):]
        self.reset(state)
        return y[0] if state.batch == 1 and x is None else y

    def warm(self, state: StreamState) -> np.ndarray:
        """Per stream: has it seen a full receptive field (plus the lag) since its reset?"""
        return state.seen >= self.receptive_field + self.lag

    def denoise_blocks(self, blocks, *, chunk: int | None = None, checked: bool = False):
        """Denoise one recording given as consecutive blocks of frames, ``(n_i, *frame)`` each.

        Yields the denoised frames in order, float32, as many in all as came in (the first
        ``lag`` outputs, which belong to no frame, are dropped; the last block is stepped
        with the :meth:`flush`). Memory is bounded by a block, so a file larger than memory
        goes through block by block; the result does not depend on the blocks. Each block
        is validated as it comes (a bad one raises, after the blocks before it were
        yielded; ``checked=True``: the caller validated them). ``chunk``: frames per engine
        step (default: each block, within :meth:`max_step`).
        """
        state, held, drop = None, None, self.lag
        for block in blocks:
            if checked:
                b = np.asarray(block)[None]
            else:
                b = self.check_frames(block, shape=None if state is None else state.shape)
            if b.shape[0] != 1:
                raise ValueError(f"blocks of one recording are (n, *frame), got {np.shape(block)}")
            if state is None:
                state = self.new_state(1, b.shape[2:])
            if held is not None:
                step = min(chunk or len(held), self.max_step(state.shape))
                y = np.concatenate([self.step(held[i : i + step], state, checked=True) for i in range(0, len(held), step)])
                if drop:
                    y, drop = y[drop:], max(0, drop - len(y))
                if len(y):
                    yield y
            held = b[0]
        if held is None:
            raise ValueError("a recording must hold at least 1 frame, got none")
        yield self._end(state, held[None], min(chunk or len(held), self.max_step(state.shape)))[0]

    def run(self, frames: np.ndarray, *, chunk: int | None = None, progress: bool = False) -> np.ndarray:
        """Denoise a whole recording (T, *frame): as many output frames as input frames.

        :meth:`denoise_blocks` over pieces of ``chunk`` frames (default: :meth:`max_step`,
        bounded memory whatever the frame size), so the last ``lag`` frames get outputs
        too. The result does not depend on ``chunk``.
        """
        if np.ndim(frames) != len(self.frame_shape) + 1:  # one recording, time first
            self._shape_error(np.shape(frames)[1:])
        x = self.check_frames(frames)[0]
        step = self.max_step(x.shape[1:]) if chunk is None else chunk
        if step < 1:
            raise ValueError(f"chunk must be >= 1 frame, got {step}")
        from tqdm import tqdm

        out = []
        with tqdm(total=len(x), disable=not progress, unit="frame", dynamic_ncols=True) as bar:
            for y in self.denoise_blocks((x[i : i + step] for i in range(0, len(x), step)), chunk=step, checked=True):
                out.append(y)
                bar.update(len(y))
        return np.concatenate(out)
