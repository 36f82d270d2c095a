"""The engine interface: one model behind torch, ONNX Runtime or TensorRT.

An engine owns the network; a :class:`StreamState` owns everything one set of streams has
seen (the front end's running statistics and the network's per-layer past rows). A step
takes a chunk of ``n >= 1`` new frames per stream and returns ``n`` denoised frames, ``lag``
frames behind: the first ``lag`` outputs of a fresh stream belong to frames before it
started and are for the caller to drop.

Subclasses implement ``_new_net_state(batch)`` and ``_net_step(feat, net_state)``; the
front end runs on the host in numpy for every backend, so all of them share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.frontend import FrontEnd

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


@dataclass
class StreamState:
    """The past of ``batch`` streams: front-end statistics and network rows."""

    frontend: FrontEnd
    net: Any  # backend-specific: named tensors/arrays, allocated once, updated in place
    batch: int
    seen: np.ndarray = field(default=None)  # frames stepped per stream since the last reset

    def __post_init__(self):
        if self.seen is None:
            self.seen = np.zeros(self.batch, dtype=np.int64)


class Engine:
    """A model ready to step streams. Use :func:`rtdenoise.backends.load_engine` to get one."""

    backend = "base"

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.frame_shape = checkpoint.frame_shape
        self.lag = checkpoint.lag
        self.receptive_field = checkpoint.receptive_field
        self.name = checkpoint.name

    # -- backend hooks -----------------------------------------------------------------
    def _new_net_state(self, batch: int) -> Any:
        raise NotImplementedError

    def _net_step(self, feat: np.ndarray, net_state: Any) -> np.ndarray:
        """(B, n, F) float32 features -> (B, n, C) float32; updates ``net_state`` in place."""
        raise NotImplementedError

    def _reset_net(self, net_state: Any, index: int | None) -> None:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------
    def new_state(self, batch: int = 1) -> StreamState:
        """State for ``batch`` streams stepped together, as if each had just started."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1 stream, got {batch}")
        return StreamState(self.config.frontend(batch), self._new_net_state(batch), batch)

    def reset(self, state: StreamState, index: int | None = None) -> None:
        """Forget the past of stream ``index`` of ``state`` (every stream if None)."""
        state.frontend.reset(index)
        self._reset_net(state.net, index)
        state.seen[slice(None) if index is None else index] = 0

    def check_frames(self, frames: np.ndarray, *, batch: int | None = None) -> np.ndarray:
        """Validate a chunk and return it as (B, n, W); raise ValueError/TypeError with the fix."""
        a = np.asarray(frames)
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(f"frames must be integer or float counts, got dtype {a.dtype}")
        w = self.frame_shape
        if a.ndim == len(w) + 1:
            a = a[None]
        if a.ndim != len(w) + 2 or a.shape[2:] != w:
            got = a.shape[2:] if a.ndim == len(w) + 2 else a.shape
            raise ValueError(
                f"expected frames of shape {w} (chunks (n, {w[0]}) or (streams, n, {w[0]})), got {got}; "
                f"is this the model for this spectrometer? model {self.name!r} was trained for {w[0]} bins; "
                "retrain for this instrument or pick another model"
            )
        if a.shape[1] == 0:
            raise ValueError("a chunk must hold at least 1 frame, got 0")
        if batch is not None and a.shape[0] != batch:
            raise ValueError(f"chunk has {a.shape[0]} streams, the state holds {batch}")
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a)
            if bad.any():
                first = int(np.argwhere(bad)[0, 1])
                raise ValueError(
                    f"frames contain {int(bad.sum())} NaN/inf values (first in frame {first} of the chunk); "
                    "nothing was processed"
                )
        return a

    def step(self, frames: np.ndarray, state: StreamState) -> np.ndarray:
        """Advance by a chunk and return the denoised frames ``lag`` behind, float32.

        ``frames``: (n, W) for a single-stream state, or (B, n, W). Returns the same shape.
        A bad chunk raises before any state changes.
        """
        single = np.ndim(frames) == len(self.frame_shape) + 1
        x = self.check_frames(frames, batch=state.batch)
        feat, stats = state.frontend.features(x)
        out = self._net_step(feat, state.net)
        y = state.frontend.reconstruct(out, stats).astype(np.float32)
        state.seen += x.shape[1]
        return y[0] if single else y

    def warm(self, state: StreamState) -> np.ndarray:
        """Per stream: has it seen a full receptive field (plus the lag) since its reset?"""
        return state.seen >= self.receptive_field + self.lag

    def run(self, frames: np.ndarray, *, chunk: int | None = None, progress: bool = False) -> np.ndarray:
        """Denoise a whole recording (T, W): as many output frames as input frames.

        Steps through it ``chunk`` frames at a time (default 1024: bounded memory), then
        flushes the lag by repeating the last frame, so the last ``lag`` frames get outputs
        too. The result does not depend on ``chunk``.
        """
        x = self.check_frames(frames)[0]
        t = x.shape[0]
        step = 1024 if chunk is None else chunk
        if step < 1:
            raise ValueError(f"chunk must be >= 1 frame, got {step}")
        state = self.new_state(1)
        out = np.empty((t + self.lag, *self.frame_shape), dtype=np.float32)
        padded_end = t + self.lag
        from tqdm import tqdm

        with tqdm(total=t, disable=not progress, unit="frame", dynamic_ncols=True) as bar:
            pos = 0
            while pos < padded_end:
                n = min(step, padded_end - pos)
                if pos + n <= t:
                    piece = x[pos : pos + n]
                else:  # the flush: repeat the last frame past the end
                    real = x[pos:t]
                    piece = np.concatenate([real, np.repeat(x[t - 1 : t], n - len(real), axis=0)])
                out[pos : pos + n] = self.step(piece, state)
                bar.update(min(n, max(0, t - pos)))
                pos += n
        return out[self.lag :]
