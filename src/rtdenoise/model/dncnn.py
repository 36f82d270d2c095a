"""The causal DnCNN family.

Residual learning as in DnCNN: the network predicts the noise of frame ``t − lag`` from
frames ``≤ t`` and subtracts it from that frame. Convolutions are causal along time.
Three layouts:

- ``arch="subspace"`` (default): the front end tracks the stream's spectral subspace
  (causal PCA, see ``frontend.py``); the network is a temporal CNN over the ``rank``
  coefficients (whitened by their eigenvalues) and the log eigenvalues. It predicts, per
  coefficient and per frame, the weights of a short causal filter over that coefficient's
  last ``taps`` values (a kernel-prediction head, as in KPCN): the output is linear in the
  noisy input given the weights, so one model serves any brightness, and shrinking a
  noise-only direction or smoothing a slow one are both one weight pattern away. The
  weights start as the identity (pass ``z`` through, ``lag`` frames late). Tiny and fast.
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

from rtdenoise.model.streaming import CausalConv, History


@dataclass
class ModelConfig:
    """Architecture of a causal DnCNN; stored whole in every checkpoint."""

    arch: str = "subspace"  # "subspace" (causal PCA coefficients), "spectral" (wavelengths as channels) or "2d" (DeepDenoise)
    n_bins: int = 152  # frame width W the model is built for
    rank: int = 8  # "subspace" only: tracked spectral dimensions (the signal needs ~3; spare ones let it shrink noise)
    cov_horizon: int = 1000  # "subspace" only: frames of the running covariance (200 s at 5 Hz; longer = a better-estimated subspace)
    taps: int = 8  # "subspace" only: frames in each predicted filter; must exceed lag
    depth: int = 8  # conv layers in all, first and last included
    width: int = 64  # hidden channels
    kernel_t: int = 3  # taps along time
    kernel_w: int = 3  # taps along wavelength ("2d" only)
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4, 1])  # per layer along time; [] = all 1
    lag: int = 0  # frames of lookahead: the output for frame t leaves when t + lag arrives
    horizon: int = 150  # front end: frames in the running baseline (30 s at 5 Hz)
    floor: float = 25.0  # front end: variance floor in counts² (about a read noise of 5)

    def __post_init__(self):
        if self.arch not in ("subspace", "spectral", "2d"):
            raise ValueError(f"arch must be 'subspace', 'spectral' or '2d', got {self.arch!r}")
        if self.arch == "subspace" and not 1 <= self.rank <= self.n_bins:
            raise ValueError(f"rank must be in 1..n_bins ({self.n_bins}) for arch 'subspace', got {self.rank}")
        if self.arch == "subspace" and self.taps <= self.lag:
            raise ValueError(f"taps ({self.taps}) must exceed lag ({self.lag}) so the filter reaches frame t - lag")
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
        rf = 1 + sum((self.kernel_t - 1) * di for di in d)
        return rf + self.taps - 1 if self.arch == "subspace" else rf

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
        head = c.rank * c.taps if c.arch == "subspace" else c_out
        chans = [c_in] + [c.width] * (c.depth - 1) + [head]
        self.layers = nn.ModuleList(
            CausalConv(chans[i], chans[i + 1], c.kernel_t, dilation=dil[i], kernel_w=kw) for i in range(c.depth)
        )
        if c.arch == "subspace":
            # The filter taps: the last `taps` coefficient rows; identity = the tap of frame t - lag.
            self.taps = History(c_out, c.taps - 1)
            eye = torch.zeros(1, c.rank, 1, c.taps)
            eye[..., c.taps - 1 - c.lag] = 1.0
            self.register_buffer("identity_taps", eye, persistent=False)
        else:
            self.delay = History(c_out, c.lag)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init keeps activations at unit scale through the ReLUs; the last layer starts
        # near zero so the untrained model is the identity (residual learning's fixed point)
        # and early training does not stall on a plateau of large random corrections.
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.conv.weight, nonlinearity="relu")
            nn.init.zeros_(layer.conv.bias)
        if self.config.arch == "subspace":
            nn.init.zeros_(self.layers[-1].conv.weight)  # filters start as exactly the identity
        else:
            self.layers[-1].conv.weight.data.mul_(0.01)

    @property
    def _buffer_name(self) -> str:
        return "taps" if self.config.arch == "subspace" else "delay"

    def state_names(self) -> list[str]:
        return [f"layers.{i}.previous" for i in range(len(self.layers))] + [f"{self._buffer_name}.previous"]

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        w = self.config.n_bins if self.config.arch == "2d" else 0
        shapes = {f"layers.{i}.previous": l.state_shape(batch, w) for i, l in enumerate(self.layers)}
        shapes[f"{self._buffer_name}.previous"] = getattr(self, self._buffer_name).state_shape(batch, w)
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
        if self.config.arch == "subspace":
            return self._step_subspace(xn, state)
        if self.config.arch == "2d":
            h = xn.unsqueeze(1)  # (B, 1, T, W)
        else:
            h = xn.transpose(1, 2)  # (B, W, T): wavelengths are channels
        t = h.shape[2]
        new = {}
        past, new["delay.previous"] = self.delay(h, state["delay.previous"])
        h = self._trunk(h, state, new)
        out = past[:, :, :t] - h  # residual: remove the predicted noise of frame t - lag
        out = out.squeeze(1) if self.config.arch == "2d" else out.transpose(1, 2)
        return out, new

    def _trunk(self, h: torch.Tensor, state: dict, new: dict) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h, new[f"layers.{i}.previous"] = layer(h, state[f"layers.{i}.previous"])
            if i < last:
                h = torch.relu(h)
        return h

    def _step_subspace(self, feat: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        r, k = self.config.rank, self.config.taps
        f = feat.transpose(1, 2)  # (B, 2r, T)
        z, loglam = f[:, :r], f[:, r:]
        t = f.shape[2]
        new = {}
        # Whitened coefficients: each direction in units of its own spread, so the trunk
        # sees O(1) inputs whatever the brightness.
        h = torch.cat([z * torch.exp(-0.5 * loglam), loglam], dim=1)
        w = self._trunk(h, state, new)  # (B, r·taps, T)
        w = w.reshape(w.shape[0], r, k, t).transpose(2, 3) + self.identity_taps  # (B, r, T, taps)
        zc, new["taps.previous"] = self.taps(z, state["taps.previous"])  # (B, r, taps - 1 + T)
        windows = torch.stack([zc[:, :, j : j + t] for j in range(k)], dim=3)  # (B, r, T, taps)
        out = (w * windows).sum(dim=3)  # (B, r, T)
        return out.transpose(1, 2), new

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        """Offline: the same step from a zero state. ``xn`` (B, T, W) -> (B, T, W)."""
        out, _ = self.step(xn, self.init_state(xn.shape[0], device=xn.device, dtype=xn.dtype))
        return out
