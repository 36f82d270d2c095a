"""The model config, stored whole in every checkpoint, and the registry of model families."""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field

# arch -> the family's class, imported when first asked for ("module:Class"). A new kind of
# model is one new class and one line here; the engines, the service and the wire never
# look at ``arch``.
FAMILIES = {
    "subspace": "rtdenoise.model.subspace:SubspaceModel",
    "spectral": "rtdenoise.model.residual:ChannelsModel",
    "2d": "rtdenoise.model.residual:DeepDenoise2D",
    "imaging-unet": "rtdenoise.model.imaging:CausalUNet",
    "imaging-fact": "rtdenoise.model.imaging:Factorized",
}


def family(arch: str):
    """The model family class registered under ``arch``."""
    if arch not in FAMILIES:
        raise ValueError(f"arch must be one of {', '.join(repr(a) for a in FAMILIES)}, got {arch!r}")
    module, _, name = FAMILIES[arch].partition(":")
    return getattr(importlib.import_module(module), name)


MODALITIES = ("spectral", "imaging")
# Imaging: per-frame rates of the leaky integrators of the input (time constants of about
# 1.4, 3.5, 8 and 16 frames). Beside the U-Net's filters they are the long full-resolution
# memory a Gaussian + EMA filter has: +0.44 dB at 1 photon, +0.23 at 10 in an A/B from one
# start (benchmarks/results/imaging_leaky_ab.md).
LEAKY_RATES = (0.5, 0.25, 0.12, 0.06)


def default_config(modality: str = "spectral", **changes) -> "ModelConfig":
    """The model a modality trains by default, with ``changes``: the subspace model for
    spectra; for movies a causal U-Net with a 31-frame temporal field and leaky integrators
    of the input (:data:`LEAKY_RATES`), a 10 s per-pixel baseline at 30 Hz that follows the
    frame's rigid motion, and a variance floor of 1 photon². An ``arch`` of another modality
    is a ValueError."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    base = (dict(arch="imaging-unet", depth=4, width=8, horizon=300, floor=1.0, rates=list(LEAKY_RATES), register=True)
            if modality == "imaging" else {})
    config = ModelConfig(**(base | changes))
    if config.family.modality != modality:
        raise ValueError(f"arch {config.arch!r} is a {config.family.modality} model; give --modality {config.family.modality}")
    return config


@dataclass
class ModelConfig:
    """Architecture of a causal model; stored whole in every checkpoint."""

    arch: str = "subspace"  # model family (FAMILIES): "subspace" (causal PCA coefficients), "spectral" (wavelengths as channels) or "2d" (DeepDenoise)
    n_bins: int = 152  # frame width W the model is built for (imaging families take any H × W)
    rank: int = 8  # "subspace" only: tracked spectral dimensions (the signal needs ~3; spare ones let it shrink noise)
    cov_horizon: int = 1000  # "subspace" only: frames of the running covariance (200 s at 5 Hz; longer = a better-estimated subspace)
    taps: int = 8  # "subspace" only: frames in each predicted filter; must exceed lag
    depth: int = 8  # conv layers in all, first and last included (imaging families: temporal layers)
    width: int = 64  # hidden channels
    kernel_t: int = 3  # taps along time
    kernel_w: int = 3  # taps along wavelength ("2d"), along each image axis (imaging families)
    dilations: list[int] | None = None  # per layer along time; [] = all 1; None = the family's default for the depth
    lag: int = 0  # frames of lookahead: the output for frame t leaves when t + lag arrives
    horizon: int = 150  # front end: frames in the running baseline (30 s at 5 Hz)
    floor: float = 25.0  # front end: variance floor in counts² (about a read noise of 5)
    # "subspace" only: the output's baseline is a slow mean over slow_horizon frames (0: off;
    # None: 1500 for "subspace", 0 for the others) plus the running baseline's departure from
    # it smoothed over smooth_bins (σ) across wavelength, which drops the running baseline's
    # own per-bin noise outside the subspace the network returns (frontend module doc).
    slow_horizon: int | None = None
    smooth_bins: float = 2.0
    rates: list[float] = field(default_factory=list)  # imaging families: leaky integrators of the input, one per rate (per frame)
    # Front end: the input's counts per photon (its noise variance per count) and dark level;
    # frames become (x − offset) / gain photons first. Self-supervised fine-tuning sets them
    # from the movie's photon transfer (selfsup.photon_transfer).
    gain: float = 1.0
    offset: float = 0.0
    # Imaging front end: the running baseline follows the frame's rigid motion (frontend.follow_motion).
    register: bool = False
    # "subspace" only: the instrument's band [first, last bin centre] in nm, to put hemoglobin's
    # two absorption spectra in the subspace (4 of its `rank` directions: FrontEnd's `spectra`)
    # instead of estimating them from data; None: every direction from data.
    hemoglobin: list[float] | None = None
    # "subspace" only: each output coefficient's predicted filter takes every coefficient's last
    # `taps` values, not only its own (rank² · taps weights a frame instead of rank · taps).
    mix: bool = False
    # With `hemoglobin`: the sensor's emission spectrum (`n_bins` values, any scale: how a frame
    # changes as the sensor brightens) as one more known direction, its 5th. [] for a network
    # trained on each instance's own sensor whose checkpoint has no spectrum yet (a lab gives
    # its own with `rtdenoise set-sensor` to run it); None: the sensor's direction is tracked from data.
    sensor: list[float] | None = None

    def __post_init__(self):
        fam = family(self.arch)
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.dilations is None:
            self.dilations = fam.default_dilations(self.depth)
        if self.dilations and len(self.dilations) != self.depth:
            raise ValueError(f"dilations needs one entry per layer ({self.depth}), got {len(self.dilations)}")
        if self.lag < 0:
            raise ValueError(f"lag must be >= 0, got {self.lag}")
        self.dilations = list(self.dilations)
        self.rates = [float(r) for r in self.rates]
        self.gain, self.offset = float(self.gain), float(self.offset)
        if not (math.isfinite(self.gain) and self.gain > 0 and math.isfinite(self.offset)):
            raise ValueError(f"gain must be a finite count per photon > 0 and offset finite, got {self.gain} and {self.offset}")
        if self.rates and (fam.modality != "imaging" or not all(0.0 < r <= 1.0 for r in self.rates)):
            raise ValueError(f"rates are for imaging families, each in (0, 1] per frame; got {self.rates} for arch {self.arch!r}")
        if self.slow_horizon is None:
            self.slow_horizon = 1500 if self.arch == "subspace" else 0
        self.slow_horizon, self.smooth_bins = int(self.slow_horizon), float(self.smooth_bins)
        if self.slow_horizon and self.arch != "subspace":
            # the other families predict every bin of (clean − b)/s: their outputs need b itself
            raise ValueError(f"slow_horizon is for the subspace family, not arch {self.arch!r}")
        if self.slow_horizon and self.slow_horizon < self.horizon or not self.smooth_bins >= 0:
            raise ValueError(f"slow_horizon must be 0 or >= horizon ({self.horizon}) and smooth_bins >= 0, "
                             f"got {self.slow_horizon} and {self.smooth_bins}")
        self.register = bool(self.register)
        self.mix = bool(self.mix)
        if self.mix and self.arch != "subspace":
            raise ValueError(f"mix (filters across the subspace's coefficients) is for arch 'subspace', not {self.arch!r}")
        if self.hemoglobin is not None:
            self.hemoglobin = [float(x) for x in self.hemoglobin]
            if self.arch != "subspace" or len(self.hemoglobin) != 2 or not self.hemoglobin[0] < self.hemoglobin[1]:
                raise ValueError(f"hemoglobin is the band [first, last bin centre] in nm of a subspace model, got "
                                 f"{self.hemoglobin} for arch {self.arch!r}")
        if self.sensor is not None:
            self.sensor = [float(x) for x in self.sensor]
            if self.hemoglobin is None:
                raise ValueError("sensor (a known sensor spectrum) goes beside hemoglobin's: give hemoglobin too")
            if self.sensor and (len(self.sensor) != self.n_bins or not all(math.isfinite(x) for x in self.sensor)
                                or not any(self.sensor)):
                raise ValueError(f"sensor must be {self.n_bins} finite values (one per bin), not all zero; got "
                                 f"{len(self.sensor)} values")
        if self.register and fam.modality != "imaging":
            raise ValueError(f"register (following rigid motion) is for imaging families, not arch {self.arch!r}")
        fam.check_config(self)

    @property
    def family(self):
        """The model family class this config builds."""
        return family(self.arch)

    def frontend(self, batch: int = 1, frame: tuple[int, ...] | None = None):
        """A fresh causal front end for ``batch`` streams of this model (frames of shape ``frame``)."""
        return self.family.frontend(self, batch, frame)

    @property
    def receptive_field(self) -> int:
        """Frames of input (the current one included) that one output depends on."""
        return self.family.receptive_field(self)

    def known_spectra(self):
        """(2, n_bins) hemoglobin's absorption spectra on this model's band (``hemoglobin``), or None."""
        if self.hemoglobin is None:
            return None
        import numpy as np

        from rtdenoise.synth.spectral import hemoglobin_extinction

        return np.stack(hemoglobin_extinction(np.linspace(*self.hemoglobin, self.n_bins)))

    def build(self):
        """A freshly initialised network of this config's family."""
        return self.family(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)
