"""PyTorch engine: CPU, or CUDA when present.

On CUDA, one-frame steps replay a CUDA graph captured once per :class:`StreamState` (its
state tensors are already at fixed addresses; the graph adds a static input buffer), which
removes most of the per-kernel launch cost of a small network. A short chunk (up to
:data:`REPLAY_MAX` frames: a live stream catching up) replays it once per frame; longer
chunks (offline) and the CPU run the plain step.

On CUDA a per-element front end (images, and spectral models without a subspace) runs on
the GPU too (:class:`TorchFrontEnd`): the raw frame goes to the card as it came (uint16: half
the bytes of float32), and the graph holds front end, network and the way back to counts,
so a step is one copy in, one replay, one copy out. The host front end costs more than the
network for a 512 × 512 frame (about 2 ms of numpy per frame on a CPU core).

On CUDA the network runs in full float32 unless ``tf32=True``: PyTorch lets cuDNN's
convolutions use TF32 (10-bit mantissa) by default on Ampere and later, which moved the
outputs of a test model by 0.2 % of their value on an H200; the engine turns it off for its
own steps (and restores the process's setting after each). ``half=True`` runs the network's
convolutions in float16 (autocast; the front end, the states and the way back to counts stay
float32/float64): the GPU's fastest path short of TensorRT, stated against float32 in bench_gpu.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from rtdenoise.backends.base import Engine
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.frontend import follow_motion, shrink_baseline, slot_view

REPLAY_MAX = 8  # chunks up to this many frames replay the one-frame CUDA graph; longer ones run eagerly


class TorchEngine(Engine):
    """Steps the network with PyTorch; per-layer states are tensors updated in place.

    ``threads`` sets torch's (process-wide) intra-op thread count when given: a small
    model stepped a frame at a time is many times slower with several threads contending
    on a busy CPU than with one. None leaves torch's setting alone. ``tf32``: let CUDA
    convolutions and matrix products use TF32 (faster on large frames, ~1e-3 relative error).
    ``half``: run the network under float16 autocast (states are kept in float32).
    ``device_frontend``: run a per-element front end on ``device`` (default: on CUDA); a
    subspace front end always runs on the host.
    """

    backend = "torch"

    def __init__(self, checkpoint: Checkpoint, *, device: str | None = None, cuda_graph: bool = True,
                 threads: int | None = 1, tf32: bool = False, device_frontend: bool | None = None,
                 half: bool = False):
        super().__init__(checkpoint)
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self._layout = checkpoint.model().to(self.device)
        self.gpu = self.device.type == "cuda"
        self.cuda_graph = bool(cuda_graph) and self.gpu
        self.tf32 = bool(tf32)
        self.half = bool(half)
        self.device_frontend = self.device.type == "cuda" if device_frontend is None else bool(device_frontend)

    def _new_net_state(self, batch: int, frame: tuple[int, ...]) -> dict[str, torch.Tensor]:
        state = self.net.init_state(batch, frame=frame, device=self.device)
        self.net.check_state(state)
        return _GraphState(state) if self.cuda_graph else state

    def _allocate(self, state, frame: tuple[int, ...]) -> None:
        super()._allocate(state, frame)
        if self.device_frontend and not state.frontend.rank:
            state.frontend = TorchFrontEnd(state.frontend, self.device)

    def _advance(self, x: np.ndarray, state) -> np.ndarray:
        fe = state.frontend
        if not isinstance(fe, TorchFrontEnd):
            return super()._advance(x, state)
        with torch.inference_mode(), self._precision():
            if isinstance(state.net, _GraphState) and x.shape[1] <= REPLAY_MAX:
                st = state.net
                if st.graph is None:
                    self._capture(st, torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=self.device),
                                  lambda xin: self._advance_on_device(xin, fe, st), fe.arrays())
                return self._replay(st, _to_device(x, self.device))
            xt = _to_device(x, self.device).to(torch.float32)
            return self._advance_on_device(xt, fe, state.net).cpu().numpy()

    def _advance_on_device(self, x: torch.Tensor, fe: "TorchFrontEnd", net_state) -> torch.Tensor:
        feat, out_b, out_s, out_count = fe.normalize(x)
        return fe.to_counts(self._step_into(feat, net_state), out_b, out_s, out_count)

    @torch.inference_mode()
    def _net_step(self, feat: np.ndarray, net_state: dict[str, torch.Tensor]) -> np.ndarray:
        with self._precision():
            if isinstance(net_state, _GraphState) and feat.shape[1] <= REPLAY_MAX:
                if net_state.graph is None:
                    self._capture(net_state, torch.zeros((feat.shape[0], 1, *feat.shape[2:]), device=self.device),
                                  lambda xin: self._step_into(xin, net_state))
                return self._replay(net_state, torch.from_numpy(feat).to(self.device))
            x = torch.from_numpy(feat).to(self.device)
            return self._step_into(x, net_state).cpu().numpy()

    @staticmethod
    def _replay(st: "_GraphState", x: torch.Tensor) -> np.ndarray:
        """Step ``x`` (B, n, ...) one frame at a time through ``st``'s one-frame graph.

        A short run (a live stream catching up after a stall) is n replays rather than one
        eager call on an input shape that may be new, whose first call sets up its kernels
        (that cost was not measured per shape here). The result is the same: the model is
        causal (chunks of 6 equal the CPU engine as single frames do, bench_gpu)."""
        n = x.shape[1]
        out = st.static_out if n == 1 else st.static_out.new_empty((x.shape[0], n, *st.static_out.shape[2:]))
        for i in range(n):
            st.static_in.copy_(x[:, i : i + 1])
            st.graph.replay()
            if n > 1:
                out[:, i : i + 1].copy_(st.static_out)
        return out.cpu().numpy()

    @contextlib.contextmanager
    def _precision(self):
        """TF32 as this engine was asked, for its steps only (torch's switches are process-wide)."""
        if self.device.type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def _step_into(self, x: torch.Tensor, net_state: dict[str, torch.Tensor]) -> torch.Tensor:
        # no weight cache: a CUDA graph must hold the casts it replays, not tensors made before it.
        # Entered only for half: even disabled, autocast costs 3 µs a step on the per-frame path.
        cast = (torch.autocast(self.device.type, dtype=torch.float16, cache_enabled=False) if self.half
                else contextlib.nullcontext())
        with cast:
            out, new = self.net.step(x, net_state)
        for k, v in new.items():  # in place: the state's addresses never move (and keep their float32)
            net_state[k].copy_(v)
        return out.float()

    def _capture(self, st: "_GraphState", static_in: torch.Tensor, fn, more_state=()) -> None:
        """Capture ``fn(static_in)`` (which updates ``st`` and ``more_state`` in place) as ``st``'s graph.

        Warm-up runs on a side stream (cuDNN picks its kernels outside the capture) and
        advance the state, so the state is saved first and restored after the capture."""
        tensors = [*st.values(), *more_state]
        saved = [v.clone() for v in tensors]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
        for v, old in zip(tensors, saved):
            v.copy_(old)
        st.graph, st.static_in, st.static_out = graph, static_in, static_out


# The service's frames are read-only views of the received message; torch only reads them
# (to copy them to the device), so its warning about non-writable arrays says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def _to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Frames to ``device`` in their own dtype (a uint16 frame moves half the bytes of a float32 one).

    torch takes only native byte order: big-endian frames are copied first (no copy otherwise)."""
    x = np.require(x, dtype=x.dtype.newbyteorder("="), requirements=["C"])
    return torch.from_numpy(x).to(device)


class TorchFrontEnd:
    """:class:`~rtdenoise.model.frontend.FrontEnd`'s per-element statistics (no subspace) as
    float32 tensors on the engine's device (counts and shifts float64), updated in place so a
    CUDA graph can hold them.

    The same arithmetic, in the same order and precision, as the numpy front end it is made
    from (and whose state it takes over): outputs match the host path to a float32 rounding
    (1e-5 of the frame's scale: the two libraries sum in other orders).
    :meth:`normalize` takes float32 frames on the device and returns the network's features
    and the statistics of the frames the outputs belong to (``lag`` earlier)."""

    def __init__(self, fe, device: torch.device):
        if fe.rank:
            raise ValueError("a subspace front end runs on the host")
        self.frame_shape, self.batch, self.lag, self.shrink = fe.frame_shape, fe.batch, fe.lag, fe.shrink
        self.horizon, self.floor = float(fe.horizon), fe.floor
        self.gain, self.offset, self.photons, self.register = fe.gain, fe.offset, fe.photons, fe.register
        # F.pad's order: the last dimension first, (before, after) each
        self.pad = None if fe.pad is None else [p for dim in reversed(fe.pad[2:]) for p in dim]

        def t(a, dtype=torch.float32):  # float32 statistics, as the host's for images
            return torch.tensor(a, dtype=dtype, device=device)

        self.mean, self.hist_b, self.hist_s = t(fe.mean), t(fe.hist_b), t(fe.hist_s)
        self.count, self.shift = t(fe.count, torch.float64), t(fe.shift, torch.float64)

    def arrays(self) -> list[torch.Tensor]:
        return [self.mean, self.count, self.hist_b, self.hist_s] + ([self.shift] if self.register else [])

    def view(self, index: int) -> "TorchFrontEnd":
        return slot_view(self, index)

    def reset(self, index: int | None = None) -> None:
        sl = slice(None) if index is None else index
        self.mean[sl] = 0.0
        self.count[sl] = 0.0
        self.hist_b[sl] = 0.0
        self.hist_s[sl] = 1.0
        self.shift[sl] = 0.0

    def normalize(self, x: torch.Tensor):
        n = x.shape[1]
        if self.photons:
            x = (x - self.offset) / self.gain
        per_stream = (self.batch,) + (1,) * len(self.frame_shape)
        b = torch.empty_like(x)
        for i in range(n):  # the running mean's recurrence, as FrontEnd.normalize
            self.count += 1.0
            alpha = (1.0 / torch.clamp(self.count, max=self.horizon)).to(self.mean.dtype)
            if self.register:
                b[:, i] = follow_motion(self.mean, self.shift, x[:, i], self.count - 1.0, alpha, self.floor)
                continue
            self.mean += alpha.view(per_stream) * (x[:, i] - self.mean)
            b[:, i] = self.mean
        s = torch.sqrt(torch.clamp(b, min=0.0) + self.floor)
        feat = ((x - b) / s).to(torch.float32)
        if self.pad:
            feat = F.pad(feat, self.pad, mode="replicate")
        out_count = (self.count - n)[:, None] + torch.arange(1 - self.lag, n + 1 - self.lag, device=x.device)
        if not self.lag:
            return feat, b, s, out_count
        fb = torch.cat([self.hist_b, b], dim=1)
        fs = torch.cat([self.hist_s, s], dim=1)
        self.hist_b.copy_(fb[:, n:])
        self.hist_s.copy_(fs[:, n:])
        return feat, fb[:, :n], fs[:, :n], out_count

    def to_counts(self, out: torch.Tensor, out_b: torch.Tensor, out_s: torch.Tensor, out_count: torch.Tensor) -> torch.Tensor:
        if self.pad:
            h, w = self.frame_shape
            out = out[..., :h, :w]
        if self.shrink:  # always: a CUDA graph cannot skip it once settled, where it subtracts exactly 0
            out_b = out_b - shrink_baseline(out_b, out_s, out_count, int(self.horizon))
        y = out_b + out_s * out
        return (y * self.gain + self.offset if self.photons else y).to(torch.float32)


class _GraphState(dict):
    """Named state tensors of a set of streams, plus the CUDA graph of their 1-frame step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph = None
        self.static_in = None
        self.static_out = None
