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


def _checked_recording(a, name: str, axes: str, dtype) -> np.ndarray:
    """A recorded noise stack as ``dtype``: of ``axes`` (its rank), numeric, finite."""
    a = np.asarray(a)
    if a.ndim != axes.count(",") + 1:
        raise ValueError(f"{name} recording must be {axes}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} recording must be numeric, got dtype {a.dtype}")
    a = a.astype(dtype)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"{name} recording has {int(bad.sum())} NaN/inf values (first in frame {first})")
    return a


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
        a = _checked_recording(a, name, "(frames, wavelengths)", np.float64)
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


class MixedNoise:
    """Each instance's noise from one of ``sources``, drawn with ``weights``.

    For calibrating a trained model to a rig's recorded noise: keeping a share of the noise
    it was trained on stops it forgetting the recordings that noise stands for (fine-tuned
    on the rig alone, the shipped spectral model lost 0.6–0.9 dB on detector-model
    recordings; ``benchmarks/results/calibrate.md``).
    """

    kind = "mixed"

    def __init__(self, sources, weights):
        sources, w = list(sources), np.asarray(weights, dtype=np.float64)
        if not sources or w.shape != (len(sources),):
            raise ValueError(f"give one weight per noise source: {len(sources)} sources, weights {list(weights)}")
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
        self.sources, self.p = sources, w / w.sum()

    def describe(self) -> dict:
        return {"kind": self.kind, "sources": [s.describe() for s in self.sources], "weights": self.p.tolist()}

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        return self.sources[int(rng.choice(len(self.sources), p=self.p))].sample(clean, rng, fs=fs)


def noise_from_args(dark=None, light=None, *, n_bins: int | None = None, read_noise: float | None = None):
    """Recorded noise when both files are given, the detector model when neither is.

    ``read_noise`` (counts rms) fixes the detector model's read noise instead of drawing it.
    """
    if (dark is None) != (light is None):
        raise ValueError("give both --dark and --light recordings, or neither (the detector model is used then)")
    if dark is None:
        return DetectorNoise(None if read_noise is None else DetectorConfig(read_noise=(read_noise, read_noise)))
    if read_noise is not None:
        raise ValueError("--read-noise applies to the detector model; it cannot be combined with --dark/--light")
    return RecordedNoise.from_files(dark, light, n_bins=n_bins)


def movie_noise_from_args(dark=None, light=None, *, detector: str | None = None):
    """Movies: recorded dark and/or light stacks (:class:`RecordedMovieNoise`) when given, else
    the ``detector`` model: ``"pmt"`` (two-photon, the default) or ``"scmos"`` (a camera)."""
    models = {"pmt": PMTNoise, "scmos": SCMOSNoise}
    if detector is not None and detector not in models:
        raise ValueError(f"detector must be one of {sorted(models)}, got {detector!r}")
    if dark is None and light is None:
        return models[detector or "pmt"]()
    if detector is not None:
        raise ValueError(f"--detector {detector} picks the detector model used without recordings; with "
                         "--dark/--light the recorded noise is used: give one or the other")
    return RecordedMovieNoise.from_files(dark, light)


# ----------------------------------------------------------------------------- imaging
#
# Imaging noise works on movies (T, H, W), pixel by pixel, with the same contract: ``noisy``
# is what the camera or scanner reads, ``static`` (H, W) its expected reading with no light,
# and E[noisy] = clean + static. ``clean`` is in counts; a detector with gain g counts per
# photon sees clean / g photons (with the default gain of 1, counts are photons).


def _check_movie(clean: np.ndarray) -> np.ndarray:
    clean = np.asarray(clean)
    if clean.ndim != 3:
        raise ValueError(f"expected a clean movie (frames, height, width), got shape {clean.shape}")
    return clean


def _poisson32(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Poisson counts with mean ``lam`` as float32: exact below 100, rounded Gaussian above.

    In blocks of 2²² values, so a large movie never holds a full int64 copy of itself.
    """
    shape = np.shape(lam)
    lam = np.maximum(lam, 0.0).reshape(-1)
    out = np.empty(lam.shape, dtype=np.float32)
    block = 1 << 22
    for s in range(0, lam.size, block):
        part = lam[s : s + block]
        high = part >= 100.0
        if not high.any():
            out[s : s + block] = rng.poisson(part)
            continue
        low = ~high
        o = out[s : s + block]
        o[low] = rng.poisson(part[low])
        lh = part[high]
        o[high] = np.rint(lh + np.sqrt(lh) * rng.standard_normal(lh.shape))
    return out.reshape(shape)


def _check_ranges(cfg, positive: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if len(v) != 2 or not 0 <= v[0] <= v[1]:
            raise ValueError(f"{f.name} must be a range (low, high) with 0 <= low <= high, got {v}")
        if f.name in positive and v[0] <= 0:
            raise ValueError(f"{f.name} must be > 0, got {v}")


class _RangeConfig:
    """to_dict/from_dict shared by the imaging noise configs (all fields are ranges)."""

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) for k, v in d.items()})


class _ConfiguredNoise:
    """A detector model drawn from ranges of a config (``config_type``), validated when made."""

    config_type: type
    kind = ""

    def __init__(self, config=None):
        self.config = config or self.config_type()
        self.config.validate()

    def describe(self) -> dict:
        return {"kind": self.kind, "config": self.config.to_dict()}


@dataclass
class SCMOSConfig(_RangeConfig):
    """Ranges of the sCMOS camera model; each movie draws one value per field (per pixel where said)."""

    gain: Range = (1.0, 1.0)  # counts per photo-electron, mean over pixels (1: counts are photons)
    gain_spread: Range = (0.0, 0.02)  # per-pixel relative rms of the gain (shapes the shot variance)
    offset: Range = (90.0, 110.0)  # dark level, counts (cameras add ~100 so noise never clips at 0)
    offset_spread: Range = (0.3, 2.0)  # per-pixel fixed pattern of the dark level, counts rms
    column_offset: Range = (0.0, 1.0)  # per-column fixed pattern (column amplifiers), counts rms
    read_noise: Range = (0.8, 2.0)  # median per-pixel read noise, electrons rms
    read_spread: Range = (0.1, 0.35)  # log-normal spread of read noise over pixels (std of its log)
    hot_fraction: Range = (0.005, 0.03)  # share of noisy (RTS) pixels: the heavy tail of real sCMOS
    hot_factor: Range = (3.0, 10.0)  # their read noise over the median, drawn per pixel (log-uniform)

    def validate(self) -> None:
        _check_ranges(self, positive=("gain", "hot_factor"))
        if self.hot_fraction[1] > 1:
            raise ValueError(f"hot_fraction must be a fraction <= 1, got {self.hot_fraction}")
        if self.gain_spread[1] >= 0.5:
            raise ValueError(f"gain_spread must be below 0.5 (relative rms), got {self.gain_spread}")


class SCMOSNoise(_ConfiguredNoise):
    """sCMOS camera: Poisson shot noise, per-pixel gain, offset and read noise with hot pixels.

    ``noisy = g_p · Poisson(clean / g_p) + g · σ_p · N(0, 1) + static`` with a per-pixel gain
    ``g_p`` around the mean gain ``g``, a per-pixel read noise ``σ_p`` (electrons; log-normal
    around the median, a few percent of pixels several times noisier) and ``static`` the
    per-pixel and per-column dark level. The gain spread shapes each pixel's shot variance,
    ``g_p · clean``; the pixel-to-pixel response non-uniformity of the mean is taken to be
    part of the scene, since a denoiser cannot tell it from the scene and must keep it.
    """

    kind = "scmos"

    config_type = SCMOSConfig

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        """Noisy movie ``(T, H, W)`` float32 and the static dark level ``(H, W)`` for ``clean``."""
        clean = _check_movie(clean)
        c = self.config
        _, h, w = clean.shape
        g = _draw(rng, c.gain)
        gp = g * np.maximum(1.0 + _draw(rng, c.gain_spread) * rng.standard_normal((h, w)), 0.5)
        static = (_draw(rng, c.offset) + _draw(rng, c.offset_spread) * rng.standard_normal((h, w))
                  + _draw(rng, c.column_offset) * rng.standard_normal(w)[None, :])
        sigma = _draw(rng, c.read_noise) * np.exp(_draw(rng, c.read_spread) * rng.standard_normal((h, w)))
        hot = rng.random((h, w)) < _draw(rng, c.hot_fraction)
        sigma[hot] *= np.exp(rng.uniform(*np.log(c.hot_factor), int(hot.sum())))
        noisy = (gp * _poisson32(rng, clean / gp)).astype(np.float32)
        noisy += rng.standard_normal(clean.shape, dtype=np.float32) * (g * sigma).astype(np.float32)
        noisy += static.astype(np.float32)
        return noisy, static


@dataclass
class PMTConfig(_RangeConfig):
    """Ranges of the two-photon PMT model; each movie draws one value per field."""

    gain: Range = (1.0, 1.0)  # counts per photon, the mean pulse height (1: counts are photons)
    excess_noise: Range = (1.2, 1.6)  # excess noise factor F of the PMT: variance = F · gain · signal
    electronic_noise: Range = (0.02, 0.2)  # amplifier and digitizer noise, rms in units of one photon's pulse
    offset: Range = (0.0, 5.0)  # digitizer offset, counts
    dark_rate: Range = (0.0, 0.01)  # dark counts, photons per pixel per frame (expected, so static)

    def validate(self) -> None:
        _check_ranges(self, positive=("gain", "excess_noise"))
        if self.excess_noise[0] < 1:
            raise ValueError(f"excess_noise must be >= 1 (a factor on the Poisson variance), got {self.excess_noise}")


class PMTNoise(_ConfiguredNoise):
    """Two-photon detection: Poisson photons, each a pulse of random height, plus electronics.

    ``noisy = gain · Σ_{photons} h_k + gain · σ_e · N(0, 1) + static``: photon counts are
    Poisson with mean ``clean / gain + dark_rate``; pulse heights ``h_k`` are Gamma with mean
    1 and variance ``F − 1`` (so the sum of n is Gamma(n·k, 1/k), ``k = 1 / (F − 1)``), which
    multiplies the shot variance by the excess noise factor F. ``static = offset + gain ·
    dark_rate``, uniform over the frame. At 0.5–20 photons a pixel is mostly zeros and a few
    blurred multiples of the gain, as in two-photon recordings.
    """

    kind = "pmt"

    config_type = PMTConfig

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        """Noisy movie ``(T, H, W)`` float32 and the static offset ``(H, W)`` for ``clean``."""
        clean = _check_movie(clean)
        c = self.config
        _, h, w = clean.shape
        g, enf = _draw(rng, c.gain), _draw(rng, c.excess_noise)
        dark = _draw(rng, c.dark_rate)
        n = _poisson32(rng, clean / g + dark)
        if enf > 1.0:
            k = 1.0 / (enf - 1.0)
            hit = n > 0
            if hit.mean() < 0.5:  # mostly empty pixels: draw only where photons arrived
                n[hit] = rng.standard_gamma(n[hit] * k, dtype=np.float32) / np.float32(k)
            else:  # Gamma of shape 0 is 0, so drawing everywhere saves the gather and scatter
                n = rng.standard_gamma(n * np.float32(k), dtype=np.float32) / np.float32(k)
        sigma = _draw(rng, c.electronic_noise)
        offset = _draw(rng, c.offset)
        noisy = n * np.float32(g)  # dark counts are in n already
        if sigma > 0:
            noisy += rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(g * sigma)
        noisy += np.float32(offset)
        return noisy, np.full((h, w), offset + g * dark)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One movie's detector, from the config's ranges: ``(gain, excess_noise, dark_rate,
        electronic_noise, offset)``, what :meth:`sample_torch` takes per movie."""
        c = self.config
        return np.array([_draw(rng, c.gain), _draw(rng, c.excess_noise), _draw(rng, c.dark_rate),
                         _draw(rng, c.electronic_noise), _draw(rng, c.offset)])

    @staticmethod
    def sample_torch(clean, detector, generator=None):
        """:meth:`sample` for a batch of clean movies ``(B, T, H, W)`` on any torch device (a
        GPU: the training instances' noise made where the network trains), each movie with its
        row of ``detector`` ``(B, 5)`` (:meth:`draw`). Torch's random ``generator`` (on the
        movies' device), so not the numpy draws; the same distribution. Returns ``(noisy,
        static)``, static ``(B, 1, 1, 1)``."""
        import torch

        g, enf, dark, sigma, offset = (detector[:, i].to(clean.dtype).view(-1, 1, 1, 1) for i in range(5))
        n = torch.poisson(torch.clamp(clean / g + dark, min=0.0), generator=generator)
        # pulse heights: the sum of n Gamma(k, 1) / k is Gamma(n·k, k), k = 1 / (F − 1); none where n = 0 or F = 1
        k = 1.0 / torch.clamp(enf - 1.0, min=1e-6)
        heights = torch._standard_gamma(torch.clamp(n * k, min=1e-6), generator=generator) / k
        n = torch.where((n > 0) & (enf > 1.0), heights, n)
        noise = torch.randn(n.shape, generator=generator, dtype=n.dtype, device=n.device)
        return n * g + noise * (g * sigma) + offset, offset + g * dark


class RecordedMovieNoise:
    """Noise recorded from the microscope itself, the DeepDenoise way, for movies.

    Parameters
    ----------
    dark : array (T_d, H_d, W_d), optional
        Frames with the light off (shutter closed, laser blocked): read noise, offset,
        fixed pattern, hot pixels and drift, added to the signal as recorded. Its temporal
        mean per pixel is the ``static`` level. Without it nothing dark is added and
        ``static`` is zero.
    light : array (T_l, H_d, W_d), optional
        Frames of a steady, uniform light (a fluorescent slide, a plastic block): its
        fluctuation about each pixel's temporal mean is shot noise, rescaled per pixel by
        ``sqrt(signal / light_level)`` since shot-noise variance grows linearly with the
        signal. Without it, shot noise is exact Poisson on ``clean`` (one count a photon).
    light_level : float or array (H_d, W_d), optional
        The light recording's signal above the dark level, counts. By default each pixel's
        temporal mean of ``light`` minus that of ``dark`` (just the mean of ``light`` when
        there is no dark recording: give ``dark`` or this if the camera adds an offset).

    Every instance draws a random temporal window from each recording independently and one
    random crop of the frame's size, the same pixels in both (the same sensor pixels). A
    recording smaller than the frame is refused: noise is never tiled or resampled.
    """

    kind = "recorded_movie"

    def __init__(self, dark: np.ndarray | None = None, light: np.ndarray | None = None, *,
                 light_level: float | np.ndarray | None = None, source: dict | None = None):
        if dark is None and light is None:
            raise ValueError("give a dark recording, a light recording or both; with neither there is no noise to add")
        self.dark = self._check(dark, "dark") if dark is not None else None  # (T_d, H_d, W_d) float32
        light = self._check(light, "light") if light is not None else None
        if self.dark is not None and light is not None and self.dark.shape[1:] != light.shape[1:]:
            raise ValueError(f"dark frames are {self.dark.shape[1:]} and light frames {light.shape[1:]}; "
                             "both recordings must come from the same sensor region")
        self.frame_shape = (self.dark if self.dark is not None else light).shape[1:]
        self.dark_mean = np.zeros(self.frame_shape) if self.dark is None else self.dark.mean(axis=0, dtype=np.float64)
        # Only the light's fluctuation is kept (T_l, H_d, W_d) float32, not the recording itself.
        self.light_fluct = self.light_level = None
        if light is not None:
            mean = light.mean(axis=0, dtype=np.float64)
            light -= mean.astype(np.float32)
            self.light_fluct = light
            if light_level is None:
                level = mean - self.dark_mean
            else:
                level = np.broadcast_to(np.asarray(light_level, dtype=np.float64), self.frame_shape).copy()
                if not np.isfinite(level).all():
                    raise ValueError("light_level has NaN/inf values")
            if np.any(level <= 0):
                bad = int(np.sum(level <= 0))
                raise ValueError(f"the light recording is not brighter than the dark level in {bad} of {level.size} "
                                 "pixels; was the light on, are the files swapped, or is light_level wrong?")
            self.light_level = level
        self.source = source or {}

    @staticmethod
    def _check(a: np.ndarray, name: str) -> np.ndarray:
        a = _checked_recording(a, name, "(frames, height, width)", np.float32)
        if a.shape[0] < 2:
            raise ValueError(f"{name} recording needs at least 2 frames, got {a.shape[0]}")
        return a

    @classmethod
    def from_files(cls, dark_path=None, light_path=None, *, key: str | None = None,
                   light_level: float | None = None) -> "RecordedMovieNoise":
        from rtdenoise.io import load_frames

        dark = load_frames(dark_path, key=key) if dark_path is not None else None
        light = load_frames(light_path, key=key) if light_path is not None else None
        source = {k: str(v) for k, v in (("dark", dark_path), ("light", light_path)) if v is not None}
        return cls(dark, light, light_level=light_level, source=source)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "dark_frames": int(self.dark.shape[0]) if self.dark is not None else 0,
            "light_frames": int(self.light_fluct.shape[0]) if self.light_fluct is not None else 0,
            "frame_shape": [int(v) for v in self.frame_shape],
            **self.source,
        }

    def check_fits(self, n_frames: int, shape, *, what: str = "the clean frame {h} × {w}",
                   span: str = "one window of {n}", fix_shape: str = "simulate smaller frames",
                   fix_frames: str = "train on shorter windows") -> None:
        """Raise ValueError, with the sizes and the fix, unless a movie of ``n_frames`` frames of
        ``shape`` (H, W) can be cut from the recordings (noise is never tiled or resampled).
        ``what`` and ``span`` name the movie's frame (``{h}``, ``{w}``) and length (``{n}``)."""
        (h, w), (hr, wr) = shape, self.frame_shape
        if h > hr or w > wr:
            raise ValueError(f"the noise recordings{self._named()} are {hr} × {wr} px, smaller than "
                             f"{what.format(h=h, w=w)}; record a larger region or {fix_shape}")
        for name, rec in (("dark", self.dark), ("light", self.light_fluct)):
            if rec is not None and rec.shape[0] < n_frames:
                raise ValueError(f"the {name} recording{self._named(name)} has {rec.shape[0]} frames, fewer than "
                                 f"{span.format(n=n_frames)}; record longer or {fix_frames}")

    def _named(self, name: str | None = None) -> str:
        files = [self.source[k] for k in ((name,) if name else ("dark", "light")) if k in self.source]
        return f" ({', '.join(files)})" if files else ""

    def sample(self, clean: np.ndarray, rng: np.random.Generator, *, fs: float) -> tuple[np.ndarray, np.ndarray]:
        """Noisy movie ``(T, H, W)`` float32 and the dark level ``(H, W)`` of the crop drawn."""
        clean = _check_movie(clean)
        t, h, w = clean.shape
        hr, wr = self.frame_shape
        self.check_fits(t, (h, w))
        y, x = rng.integers(0, hr - h + 1), rng.integers(0, wr - w + 1)
        crop = (slice(y, y + h), slice(x, x + w))
        if self.light_fluct is not None:
            j = rng.integers(0, self.light_fluct.shape[0] - t + 1)
            scale = np.sqrt(np.maximum(clean, 0.0) / self.light_level[crop]).astype(np.float32)
            noisy = clean + self.light_fluct[(slice(j, j + t),) + crop] * scale
        else:
            noisy = _poisson32(rng, clean)
        noisy = noisy.astype(np.float32)
        if self.dark is not None:
            i = rng.integers(0, self.dark.shape[0] - t + 1)
            noisy += self.dark[(slice(i, i + t),) + crop]
        return noisy, self.dark_mean[crop].copy()
