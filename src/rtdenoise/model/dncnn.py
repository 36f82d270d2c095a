"""The causal DnCNN family.

Residual learning as in DnCNN: the network predicts the noise of frame ``t − lag`` from
frames ``≤ t`` and subtracts it from that frame. Convolutions are causal along time.
Three layouts:

- ``arch="subspace"`` (default): the front end tracks the stream's spectral subspace
  (causal PCA, see ``frontend.py``); the network is a temporal CNN over the ``rank``
  coefficients and their log eigenvalues, and denoises the coefficients. Tiny and fast.
- ``arch="spectral"``: the spectrum is the channel axis, ``Conv1d`` over time. The first
  layer mixes all wavelengths, so the network can use the global spectral structure
  (photometry is nearly low-rank across wavelengths). Cheap: a frame costs ~width² MACs
  per layer.
- ``arch="2d"``: DeepDenoise's layout, ``Conv2d`` over (time × wavelength) with small
  kernels, so each output sees only a local band of wavelengths; W times more work.

Inputs and outputs are in the front end's noise units (see ``frontend.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from rtdenoise.model.streaming import CausalConv, Delay


@dataclass
class ModelConfig:
    """Architecture of a causal DnCNN; stored whole in every checkpoint."""

    arch: str = "subspace"  # "subspace" (causal PCA coefficients), "spectral" (wavelengths as channels) or "2d" (DeepDenoise)
    n_bins: int = 152  # frame width W the model is built for
    rank: int = 8  # "subspace" only: tracked spectral dimensions (the signal needs ~3; spare ones let it shrink noise)
    cov_horizon: int = 300  # "subspace" only: frames of the running covariance (60 s at 5 Hz)
    depth: int = 12  # conv layers in all, first and last included
    width: int = 64  # hidden channels
    kernel_t: int = 3  # taps along time
    kernel_w: int = 3  # taps along wavelength ("2d" only)
    dilations: list[int] = field(default_factory=list)  # per layer along time; [] means all 1
    lag: int = 0  # frames of lookahead: the output for frame t leaves when t + lag arrives
    horizon: int = 150  # front end: frames in the running baseline (30 s at 5 Hz)
    floor: float = 25.0  # front end: variance floor in counts² (about a read noise of 5)

    def __post_init__(self):
        if self.arch not in ("subspace", "spectral", "2d"):
            raise ValueError(f"arch must be 'subspace', 'spectral' or '2d', got {self.arch!r}")
        if self.arch == "subspace" and not 1 <= self.rank <= self.n_bins:
            raise ValueError(f"rank must be in 1..n_bins ({self.n_bins}) for arch 'subspace', got {self.rank}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.dilations and len(self.dilations) != self.depth:
            raise ValueError(f"dilations needs one entry per layer ({self.depth}), got {len(self.dilations)}")
        if self.lag < 0:
            raise ValueError(f"lag must be >= 0, got {self.lag}")
        self.dilations = list(self.dilations)

    @property
    def frontend_rank(self) -> int:
        return self.rank if self.arch == "subspace" else 0

    def frontend(self, batch: int = 1):
        """A fresh causal front end for ``batch`` streams of this model."""
        from rtdenoise.model.frontend import FrontEnd

        return FrontEnd(
            self.n_bins,
            horizon=self.horizon,
            floor=self.floor,
            rank=self.frontend_rank,
            cov_horizon=self.cov_horizon,
            lag=self.lag,
            batch=batch,
        )

    @property
    def receptive_field(self) -> int:
        """Frames of input (the current one included) that one output depends on."""
        d = self.dilations or [1] * self.depth
        return 1 + sum((self.kernel_t - 1) * di for di in d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


class CausalDnCNN(nn.Module):
    """``step(feat, state) -> (out, new_state)`` on chunks ``(B, T, F)`` from the front end.

    ``F`` is the front end's feature count (2·rank, or W); the output has the residual
    channels (rank, or W) and trails the input by ``lag`` frames.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        dil = c.dilations or [1] * c.depth
        if c.arch == "2d":
            c_in = c_out = 1
            kw = c.kernel_w
        else:
            c_in, c_out = (2 * c.rank, c.rank) if c.arch == "subspace" else (c.n_bins, c.n_bins)
            kw = None
        self.c_out = c_out
        chans = [c_in] + [c.width] * (c.depth - 1) + [c_out]
        self.layers = nn.ModuleList(
            CausalConv(chans[i], chans[i + 1], c.kernel_t, dilation=dil[i], kernel_w=kw) for i in range(c.depth)
        )
        self.delay = Delay(c_out, c.lag)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init keeps activations at unit scale through the ReLUs; the last layer starts
        # near zero so the untrained model is the identity (residual learning's fixed point)
        # and early training does not stall on a plateau of large random corrections.
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.conv.weight, nonlinearity="relu")
            nn.init.zeros_(layer.conv.bias)
        self.layers[-1].conv.weight.data.mul_(0.01)

    def state_names(self) -> list[str]:
        return [f"layers.{i}.previous" for i in range(len(self.layers))] + ["delay.previous"]

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        w = self.config.n_bins if self.config.arch == "2d" else 0
        shapes = {f"layers.{i}.previous": l.state_shape(batch, w) for i, l in enumerate(self.layers)}
        shapes["delay.previous"] = self.delay.state_shape(batch, w)
        return shapes

    def init_state(self, batch: int, *, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Zero state for ``batch`` streams: what an offline pass starts from."""
        return {k: torch.zeros(s, device=device, dtype=dtype) for k, s in self.state_shapes(batch).items()}

    def step(self, xn: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Advance by a chunk ``xn`` (B, T, W); returns denoised frames lag behind, (B, T, W)."""
        expected = set(self.state_names())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"state keys do not match the model: missing {missing}, extra {extra}")
        if self.config.arch == "2d":
            h = xn.unsqueeze(1)  # (B, 1, T, W)
        else:
            h = xn.transpose(1, 2)  # (B, F, T): features are channels
        new = {}
        delayed, new["delay.previous"] = self.delay(h[:, : self.c_out], state["delay.previous"])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h, new[f"layers.{i}.previous"] = layer(h, state[f"layers.{i}.previous"])
            if i < last:
                h = torch.relu(h)
        out = delayed - h  # residual: remove the predicted noise
        out = out.squeeze(1) if self.config.arch == "2d" else out.transpose(1, 2)
        return out, new

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        """Offline: the same step from a zero state. ``xn`` (B, T, W) -> (B, T, W)."""
        out, _ = self.step(xn, self.init_state(xn.shape[0], device=xn.device, dtype=xn.dtype))
        return out
