"""PyTorch engine: CPU, or CUDA when present.

On CUDA, one-frame steps replay a CUDA graph captured once per :class:`StreamState` (its
state tensors are already at fixed addresses; the graph adds a static input buffer), which
removes most of the per-kernel launch cost of a small network. Chunks of other lengths, and
the CPU, run the plain step.
"""

from __future__ import annotations

import numpy as np
import torch

from rtdenoise.backends.base import Engine
from rtdenoise.model.checkpoint import Checkpoint


class TorchEngine(Engine):
    """Steps the network with PyTorch; per-layer states are tensors updated in place.

    ``threads`` sets torch's (process-wide) intra-op thread count when given: a small
    model stepped a frame at a time is many times slower with several threads contending
    on a busy CPU than with one. None leaves torch's setting alone.
    """

    backend = "torch"

    def __init__(self, checkpoint: Checkpoint, *, device: str | None = None, cuda_graph: bool = True,
                 threads: int | None = 1):
        super().__init__(checkpoint)
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self._layout = checkpoint.model().to(self.device)
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"

    def _new_net_state(self, batch: int, frame: tuple[int, ...]) -> dict[str, torch.Tensor]:
        state = self.net.init_state(batch, frame=frame, device=self.device)
        self.net.check_state(state)
        return _GraphState(state) if self.cuda_graph else state

    @torch.inference_mode()
    def _net_step(self, feat: np.ndarray, net_state: dict[str, torch.Tensor]) -> np.ndarray:
        if isinstance(net_state, _GraphState) and feat.shape[1] == 1:
            return self._graph_step(feat, net_state)
        x = torch.from_numpy(feat).to(self.device)
        return self._step_into(x, net_state).cpu().numpy()

    def _step_into(self, x: torch.Tensor, net_state: dict[str, torch.Tensor]) -> torch.Tensor:
        out, new = self.net.step(x, net_state)
        for k, v in new.items():  # in place: the state's addresses never move
            net_state[k].copy_(v)
        return out

    def _graph_step(self, feat: np.ndarray, st: "_GraphState") -> np.ndarray:
        if st.graph is None:
            self._capture(st, feat.shape)
        st.static_in.copy_(torch.from_numpy(feat))
        st.graph.replay()
        return st.static_out.cpu().numpy()

    def _capture(self, st: "_GraphState", shape: tuple[int, ...]) -> None:
        # Warm-up runs on a side stream (cuDNN picks its kernels outside the capture) and
        # advances the state, so the state is saved first and restored after the capture.
        static_in = torch.zeros(shape, device=self.device)
        saved = {k: v.clone() for k, v in st.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step_into(static_in, st)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._step_into(static_in, st)
        for k, v in st.items():
            v.copy_(saved[k])
        st.graph, st.static_in, st.static_out = graph, static_in, static_out


class _GraphState(dict):
    """Named state tensors of a set of streams, plus the CUDA graph of their 1-frame step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph = None
        self.static_in = None
        self.static_out = None
