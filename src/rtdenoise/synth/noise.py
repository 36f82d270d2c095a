"""Noise models: recorded from the instrument (the DeepDenoise way) or a detector model.

Both turn a clean recording (T, W) in counts into ``(noisy, static)``: ``noisy`` is what
the spectrometer would read, ``static`` (W,) is its expected offset with no light (the dark
level, fixed pattern included). A perfect denoiser outputs ``clean + static``: it removes
what is random (shot noise, read noise, drift) and keeps what the detector always adds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from rtdenoise.synth.spectral import Range, _draw, lowpass_noise


@dataclass
class DetectorConfig:
    """Ranges of the embedded detector model; each instance draws one value per field."""

    gain: Range = (1.0, 1.0)  # counts per photo-electron: shot variance = gain · signal
    read_noise: Range = (2.0, 12.0)  # Gaussian read noise, counts rms
    offset: Range = (50.0, 500.0)  # dark level, counts
    fixed_pattern: Range = (0.0, 0.05)  # per-bin spread of the dark level, relative to it
    drift: Range = (0.0, 3.0)  # slow baseline drift common to all bins, counts rms
    drift_cutoff_hz: Range = (0.002, 0.02)  # drift bandwidth

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DetectorConfig fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) for k, v in d.items()})

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if len(v) != 2 or not 0 <= v[0] <= v[1]:
                raise ValueError(f"{f.name} must be a range (low, high) with 0 <= low <= high, got {v}")
        if self.gain[0] <= 0:
            raise ValueError(f"gain must be > 0, got {self.gain}")


class DetectorNoise:
    """Poisson shot noise, Gaussian read noise, a per-bin dark offset and slow drift.

    The default noise model, used when no recording of the instrument is given.
    """

    kind = "detector"

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self.config.validate()

    def describe(self) -> dict:
        return {"kind": self.kind, "config": self.config.to_dict()}

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        """Noisy frames ``(T, W)`` float64 and the static offset ``(W,)`` for ``clean``."""
        c = self.config
        t, w = clean.shape
        gain = _draw(rng, c.gain)
        offset = _draw(rng, c.offset)
        static = offset * (1.0 + _draw(rng, c.fixed_pattern) * rng.standard_normal(w))
        shot = gain * poisson(rng, np.maximum(clean, 0.0) / gain)
        read = _draw(rng, c.read_noise) * rng.standard_normal((t, w))
        drift = lowpass_noise(rng, t, fs=fs, cutoff_hz=_draw(rng, c.drift_cutoff_hz), std=_draw(rng, c.drift))
        return shot + read + static[None, :] + drift[:, None], static


class RecordedNoise:
    """Noise recorded from the instrument itself, following DeepDenoise.

    Parameters
    ----------
    dark : array (T_d, W)
        Frames with the light off: read noise, dark offset, fixed pattern and drift, added
        to the signal as recorded.
    light : array (T_l, W)
        Frames of a steady light source: its fluctuation about its temporal mean is shot
        noise (plus the dark noise of that recording). It is rescaled per wavelength by
        ``sqrt(signal / light_level)``, ``light_level = mean_t(light) − mean_t(dark)``, since
        shot-noise variance grows linearly with the signal.

    A random window is drawn from each recording independently for every instance.
    """

    kind = "recorded"

    def __init__(self, dark: np.ndarray, light: np.ndarray, *, n_bins: int | None = None, source: dict | None = None):
        dark = self._check(dark, "dark", n_bins)
        light = self._check(light, "light", n_bins)
        if dark.shape[1] != light.shape[1]:
            raise ValueError(
                f"dark has {dark.shape[1]} bins and light has {light.shape[1]}; both recordings must come "
                "from the same spectrometer"
            )
        self.dark = dark
        self.light = light
        self.dark_mean = dark.mean(axis=0)
        self.light_fluct = light - light.mean(axis=0)
        self.light_level = light.mean(axis=0) - self.dark_mean
        if np.any(self.light_level <= 0):
            bad = int(np.sum(self.light_level <= 0))
            raise ValueError(
                f"the light recording is not brighter than the dark one in {bad} of {dark.shape[1]} bins; "
                "was the light source on, and are the files swapped?"
            )
        self.source = source or {}

    @staticmethod
    def _check(a: np.ndarray, name: str, n_bins: int | None) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"{name} recording must be (frames, wavelengths), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{name} recording must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float64)
        bad = ~np.isfinite(a)
        if bad.any():
            first = int(np.argwhere(bad)[0, 0])
            raise ValueError(f"{name} recording has {int(bad.sum())} NaN/inf values (first in frame {first})")
        if n_bins is not None and a.shape[1] != n_bins:
            raise ValueError(
                f"{name} recording has {a.shape[1]} bins, the signal model has {n_bins}; record the noise on "
                "the spectrometer the model is for, or set n_bins to match"
            )
        if a.shape[0] < 2:
            raise ValueError(f"{name} recording needs at least 2 frames, got {a.shape[0]}")
        return a

    @classmethod
    def from_files(cls, dark_path, light_path, *, n_bins: int | None = None, key: str | None = None) -> "RecordedNoise":
        from rtdenoise.io import load_frames

        dark = load_frames(dark_path, key=key)
        light = load_frames(light_path, key=key)
        return cls(dark, light, n_bins=n_bins, source={"dark": str(dark_path), "light": str(light_path)})

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "dark_frames": int(self.dark.shape[0]),
            "light_frames": int(self.light.shape[0]),
            "n_bins": int(self.dark.shape[1]),
            **self.source,
        }

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        t, w = clean.shape
        if w != self.dark.shape[1]:
            raise ValueError(f"signal has {w} bins, the noise recordings have {self.dark.shape[1]}")
        for name, rec in (("dark", self.dark), ("light", self.light)):
            if rec.shape[0] < t:
                raise ValueError(
                    f"the {name} recording has {rec.shape[0]} frames, fewer than one window of {t}; "
                    "record longer or train on shorter windows"
                )
        i = rng.integers(0, self.dark.shape[0] - t + 1)
        j = rng.integers(0, self.light.shape[0] - t + 1)
        scale = np.sqrt(np.maximum(clean, 0.0) / self.light_level[None, :])
        noisy = clean + self.light_fluct[j : j + t] * scale + self.dark[i : i + t]
        return noisy, self.dark_mean.copy()


def poisson(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Poisson counts with mean ``lam``: exact below 100, rounded Gaussian above.

    numpy's Poisson sampler costs ~50 ns a value at high means; above 100 counts the
    rounded normal N(λ, λ) is indistinguishable at the precision of a spectrometer and
    several times faster, which keeps training instances cheap.
    """
    out = np.rint(lam + np.sqrt(lam) * rng.standard_normal(lam.shape))
    low = lam < 100.0
    if low.any():
        out[low] = rng.poisson(lam[low])
    return np.maximum(out, 0.0)


def noise_from_args(dark=None, light=None, *, n_bins: int | None = None):
    """Recorded noise when both files are given, the detector model when neither is."""
    if (dark is None) != (light is None):
        raise ValueError("give both --dark and --light recordings, or neither (the detector model is used then)")
    if dark is None:
        return DetectorNoise()
    return RecordedNoise.from_files(dark, light, n_bins=n_bins)
