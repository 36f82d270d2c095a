"""PyTorch engine: CPU, or CUDA when present."""

from __future__ import annotations

import numpy as np
import torch

from rtdenoise.backends.base import Engine
from rtdenoise.model.checkpoint import Checkpoint


class TorchEngine(Engine):
    """Steps the network with PyTorch; per-layer states are tensors updated in place."""

    backend = "torch"

    def __init__(self, checkpoint: Checkpoint, *, device: str | None = None):
        super().__init__(checkpoint)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = checkpoint.model().to(self.device)

    def _new_net_state(self, batch: int) -> dict[str, torch.Tensor]:
        return self.net.init_state(batch, device=self.device)

    def _reset_net(self, net_state: dict[str, torch.Tensor], index: int | None) -> None:
        for v in net_state.values():
            if index is None:
                v.zero_()
            else:
                v[index].zero_()

    @torch.inference_mode()
    def _net_step(self, feat: np.ndarray, net_state: dict[str, torch.Tensor]) -> np.ndarray:
        x = torch.from_numpy(feat).to(self.device)
        out, new = self.net.step(x, net_state)
        for k, v in new.items():  # in place: the state's addresses never move
            net_state[k].copy_(v)
        return out.cpu().numpy()
