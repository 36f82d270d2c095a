"""Residual families: the network predicts the noise of frame ``t − lag`` and subtracts it.

Residual learning as in DnCNN, with convolutions causal along time. Two layouts of a
spectrum:

- :class:`ChannelsModel` (``arch="spectral"``): the spectrum is the channel axis,
  ``Conv1d`` over time. The first layer mixes all wavelengths, so the network can use the
  global spectral structure. Cheap: a frame costs ~width² MACs per layer.
- :class:`DeepDenoise2D` (``arch="2d"``): DeepDenoise's layout, ``Conv2d`` over
  (time × wavelength) with small kernels, so each output sees only a local band of
  wavelengths; W times more work.

Inputs and outputs are in the front end's noise units (see ``frontend.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from rtdenoise.model.frontend import FrontEnd
from rtdenoise.model.streaming import CausalModel, History, State


class ResidualModel(CausalModel):
    """``step(xn, state)``: normalized frames ``(B, T, W)`` -> denoised ``(B, T, W)``, ``lag`` behind.

    A subclass says how frames become the trunk's ``(B, C, T, ...)`` tensors and back.
    """

    def __init__(self, config, *, c_in: int, kernel_w: int | tuple[int, int] | None):
        super().__init__(config)
        self.layers = self._build_trunk(c_in, kernel_w)
        self.delay = History(c_in, config.lag)  # the input, lag frames late: what the noise is taken from
        self._init_trunk()
        # Near zero, so the untrained model is close to the identity (residual learning's
        # fixed point) and early training does not stall on large random corrections.
        self.layers[-1].conv.weight.data.mul_(0.01)
        self._name_states()

    @classmethod
    def frontend(cls, config, batch: int = 1, frame=None) -> FrontEnd:
        return FrontEnd(frame or config.n_bins, horizon=config.horizon, floor=config.floor, rank=0,
                        cov_horizon=config.cov_horizon, lag=config.lag, batch=batch,
                        gain=config.gain, offset=config.offset)

    def _build_trunk(self, c_in: int, kernel_w) -> nn.ModuleList:
        """The trunk's layers, the last one giving the noise; a plain stack by default."""
        return self._trunk_layers(c_in, c_in, kernel_w=kernel_w)

    def _trunk(self, h: torch.Tensor, state: State, new: State) -> torch.Tensor:
        return self._layers(h, state, new)

    def _to_trunk(self, xn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        """The trunk's ``(B, C, T, ...)`` back to frames ``(B, T, ...)``."""
        raise NotImplementedError

    def step(self, xn: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h = self._to_trunk(xn)
        t = h.shape[2]
        new = {}
        past, new[self.delay.state_name] = self.delay(h, state[self.delay.state_name])
        h = self._trunk(h, state, new)
        return self._from_trunk(past[:, :, :t] - h), new  # remove the predicted noise of frame t - lag


class ChannelsModel(ResidualModel):
    """Wavelengths as channels: ``Conv1d`` over time."""

    arch = "spectral"

    def __init__(self, config):
        super().__init__(config, c_in=config.n_bins, kernel_w=None)

    def _to_trunk(self, xn: torch.Tensor) -> torch.Tensor:
        return xn.transpose(1, 2)  # (B, W, T)

    def _from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        return h.transpose(1, 2)


class DeepDenoise2D(ResidualModel):
    """DeepDenoise's (time × wavelength) image with ``kernel_t × kernel_w`` kernels."""

    arch = "2d"

    def __init__(self, config):
        super().__init__(config, c_in=1, kernel_w=config.kernel_w)
        self.spatial = (config.n_bins,)  # the state rows keep every wavelength

    def _to_trunk(self, xn: torch.Tensor) -> torch.Tensor:
        return xn.unsqueeze(1)  # (B, 1, T, W)

    def _from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        return h.squeeze(1)
