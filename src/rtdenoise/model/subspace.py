"""The subspace family (``arch="subspace"``, the default for spectra).

The front end tracks the stream's spectral subspace (causal PCA, see ``frontend.py``); the
network is a temporal CNN over the ``rank`` coefficients (whitened by their eigenvalues)
and the log eigenvalues. It predicts, per coefficient and per frame, the weights of a
short causal filter over that coefficient's last ``taps`` values (with ``mix``, over
every coefficient's; a kernel-prediction head, as in KPCN): the output is linear in the noisy input given the weights, so one
model serves any brightness, and shrinking a noise-only direction or smoothing a slow one
are both one weight pattern away. The weights start as the identity (pass ``z`` through,
``lag`` frames late). Tiny and fast.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rtdenoise.model.frontend import FrontEnd
from rtdenoise.model.streaming import CausalModel, History, State


class SubspaceModel(CausalModel):
    """``step(feat, state)``: features ``(B, T, 2·rank)`` -> denoised coefficients ``(B, T, rank)``, ``lag`` behind."""

    arch = "subspace"

    def __init__(self, config):
        super().__init__(config)
        c = config
        # Each output coefficient's filter reaches its own last `taps` values, or (mix) every
        # coefficient's: a signal spread over several directions (known spectra) is then one
        # filter, not several that cannot see each other.
        inputs = c.rank if c.mix else 1
        self.layers = self._trunk_layers(2 * c.rank, c.rank * inputs * c.taps)
        # The filter taps: the last `taps` coefficient rows; identity = the tap of frame t - lag.
        self.taps = History(c.rank, c.taps - 1)
        eye = torch.zeros(1, c.rank, 1, inputs * c.taps)
        for i in range(c.rank):
            eye[0, i, 0, (i if c.mix else 0) * c.taps + c.taps - 1 - c.lag] = 1.0
        self.register_buffer("identity_taps", eye, persistent=False)
        self._init_trunk()
        nn.init.zeros_(self.layers[-1].conv.weight)  # filters start as exactly the identity
        self._name_states()

    @classmethod
    def check_config(cls, config) -> None:
        if not 1 <= config.rank <= config.n_bins:
            raise ValueError(f"rank must be in 1..n_bins ({config.n_bins}) for arch 'subspace', got {config.rank}")
        known = 4 + (config.sensor is not None)
        if config.hemoglobin is not None and config.rank < known:
            raise ValueError(f"hemoglobin's spectra{' and the sensor' if known > 4 else ''} take {known} directions of "
                             f"the subspace: rank must be >= {known}, got {config.rank}")
        if config.taps <= config.lag:
            raise ValueError(f"taps ({config.taps}) must exceed lag ({config.lag}) so the filter reaches frame t - lag")

    @classmethod
    def receptive_field(cls, config) -> int:
        return super().receptive_field(config) + config.taps - 1

    @classmethod
    def frontend(cls, config, batch: int = 1, frame=None) -> FrontEnd:
        return FrontEnd(config.n_bins, horizon=config.horizon, floor=config.floor, rank=config.rank,
                        cov_horizon=config.cov_horizon, lag=config.lag, batch=batch,
                        gain=config.gain, offset=config.offset,
                        slow_horizon=config.slow_horizon, smooth_bins=config.smooth_bins,
                        spectra=config.known_spectra(),
                        sensor=None if config.sensor is None else (config.sensor or np.zeros(config.n_bins)))

    def step(self, feat: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        r, k = self.config.rank, self.config.taps
        f = feat.transpose(1, 2)  # (B, 2r, T)
        z, loglam = f[:, :r], f[:, r:]
        t = f.shape[2]
        new = {}
        # Whitened coefficients: each direction in units of its own spread, so the trunk
        # sees O(1) inputs whatever the brightness.
        h = torch.cat([z * torch.exp(-0.5 * loglam), loglam], dim=1)
        w = self._layers(h, state, new)  # (B, r·inputs·taps, T)
        w = w.reshape(w.shape[0], r, -1, t).transpose(2, 3) + self.identity_taps  # (B, r, T, inputs·taps)
        zc, new[self.taps.state_name] = self.taps(z, state[self.taps.state_name])  # (B, r, taps - 1 + T)
        windows = torch.stack([zc[:, :, j : j + t] for j in range(k)], dim=3)  # (B, r, T, taps)
        if self.config.mix:  # every output row sees every coefficient's window
            windows = windows.transpose(1, 2).reshape(w.shape[0], 1, t, r * k)
        out = (w * windows).sum(dim=3)  # (B, r, T)
        return out.transpose(1, 2), new
