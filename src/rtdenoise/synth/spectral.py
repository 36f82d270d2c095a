"""Synthetic ground truth for spectral fiber photometry (the DeepDenoise generative model).

One frame is one emission spectrum read by a spectrometer. The clean recording is

    clean(t, λ) = photons · E(λ) · exp(a(t)·S(λ) − h₁(t)·ε_HbO₂(λ) − h₂(t)·ε_Hb(λ))

- ``E``: the sensor's emission spectrum (GFP-like: a peak near 510 nm and a red shoulder),
  normalised to 1 at its peak, so ``photons`` is the count at the emission peak.
- ``S``: the sensor's ΔF spectral signature (the fraction of the light at λ that comes from
  the sensor rather than from autofluorescence), normalised to 1 at its peak.
- ``ε``: oxy- and deoxy-hemoglobin absorption (Prahl's tables, ``data/hemoglobin_prahl.csv``),
  each normalised to 1 at its maximum over 460–620 nm.
- ``a(t)``: sensor activity: release events (a rise within one frame, exponential decay)
  plus slow state-dependent changes.
- ``h(t)``: hemodynamics, low-passed below 1 Hz.

``a`` and ``h`` are sampled independently, as DeepDenoise did, so a model cannot learn a
correlation between them that a real brain need not have. Every range below is domain
randomization: each instance draws its own value, so a model trained on the draws works on
sensors and rigs it has not seen. A range ``(x, x)`` fixes the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

Range = tuple[float, float]


@dataclass
class SpectralConfig:
    """Ranges of the spectral signal model; each instance draws one value per field.

    Wavelengths in nm, times in s, rates in Hz, amplitudes in natural-log units
    (``a = 0.1`` is about +10 % fluorescence at the peak of ``S``).
    """

    # The instrument: which grid and rate a model is trained for (recorded in checkpoints).
    wl_start: float = 480.0  # first bin centre; the DeepDenoise spectrometer band
    wl_stop: float = 595.0  # last bin centre
    n_bins: int = 152  # spectrometer bins in that band
    fs: float = 5.0  # frame rate, Hz

    # Brightness: counts at the emission peak; drawn log-uniformly.
    photons: Range = (100.0, 50_000.0)  # dim fiber to bright sensor

    # Emission spectrum E: GFP-like main peak plus a red shoulder.
    emission_peak_nm: Range = (500.0, 522.0)  # GFP-family sensors peak near 510 nm
    emission_width_nm: Range = (9.0, 16.0)  # std of the main peak
    shoulder_offset_nm: Range = (22.0, 38.0)  # red shoulder sits ~30 nm above the peak
    shoulder_ratio: Range = (0.2, 0.55)  # shoulder height relative to the peak
    shoulder_width_nm: Range = (15.0, 28.0)
    autofluorescence: Range = (0.05, 0.5)  # tissue background relative to the sensor's peak

    # Activity a(t): release events convolved with an exponential decay, plus slow changes.
    event_rate_hz: Range = (0.02, 0.4)  # mean rate of release events (Poisson)
    event_amplitude: Range = (0.02, 0.3)  # log-units at the event peak; each event draws
    decay_s: Range = (0.4, 4.0)  # decay time constant of one event
    slow_std: Range = (0.0, 0.08)  # slow state-dependent changes, std in log-units
    slow_cutoff_hz: Range = (0.005, 0.05)  # their bandwidth
    # Brain states (wake / NREM / REM-like): minutes-long ACh levels with the events on top.
    state_level: Range = (0.0, 0.15)  # ACh level of wake and REM above NREM, log-units; (0, 0): no states
    state_dwell_s: Range = (60.0, 300.0)  # mean time in a wake or NREM bout (REM bouts: half of it)

    # Hemodynamics h(t): two independent low-passed processes (HbO₂ and Hb).
    hemo_std: Range = (0.0, 0.06)  # std of each, in units of the normalised absorbance
    hemo_cutoff_hz: Range = (0.05, 1.0)  # below 1 Hz

    def wavelengths(self) -> np.ndarray:
        """Bin centres in nm, shape ``(n_bins,)``."""
        return np.linspace(self.wl_start, self.wl_stop, self.n_bins)

    def replace(self, **changes) -> "SpectralConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SpectralConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown SpectralConfig fields {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def validate(self) -> None:
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if not self.wl_stop > self.wl_start:
            raise ValueError(f"wl_stop ({self.wl_stop}) must be above wl_start ({self.wl_start})")
        if not self.fs > 0:
            raise ValueError(f"fs must be > 0 Hz, got {self.fs}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if len(v) != 2 or not v[0] <= v[1]:
                    raise ValueError(f"{f.name} must be a range (low, high) with low <= high, got {v}")
                if v[0] < 0:
                    raise ValueError(f"{f.name} must be >= 0, got {v}")
        if self.photons[0] <= 0:
            raise ValueError(f"photons must be > 0 counts, got {self.photons}")


# ----------------------------------------------------------------------------- spectra


@lru_cache(maxsize=1)
def _prahl_table() -> np.ndarray:
    text = resources.files("rtdenoise").joinpath("data/hemoglobin_prahl.csv").read_text()
    return np.loadtxt(text.splitlines(), delimiter=",", comments="#")  # (N, 3): nm, HbO2, Hb


def hemoglobin_extinction(wavelengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Oxy- and deoxy-hemoglobin molar extinction at ``wavelengths`` (nm).

    Linear interpolation of Prahl's table (OMLC), each spectrum divided by its maximum over
    460–620 nm, so both are dimensionless with peak 1 (HbO₂ at 576 nm, Hb at 556 nm).
    Returns ``(eps_hbo2, eps_hb)``, each shaped like ``wavelengths``.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    table = _prahl_table()
    if wl.min() < table[0, 0] or wl.max() > table[-1, 0]:
        raise ValueError(
            f"wavelengths {wl.min():.1f}-{wl.max():.1f} nm fall outside the hemoglobin table "
            f"({table[0, 0]:.0f}-{table[-1, 0]:.0f} nm)"
        )
    hbo2 = np.interp(wl, table[:, 0], table[:, 1]) / table[:, 1].max()
    hb = np.interp(wl, table[:, 0], table[:, 2]) / table[:, 2].max()
    return hbo2, hb


def _gauss(wl: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - mu) / sd) ** 2)


def emission_components(
    wavelengths: np.ndarray,
    *,
    peak_nm: float = 510.0,
    width_nm: float = 12.0,
    shoulder_offset_nm: float = 30.0,
    shoulder_ratio: float = 0.4,
    shoulder_width_nm: float = 20.0,
    autofluorescence: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's emission (main peak + red shoulder, peak 1) and the tissue background.

    The background is autofluorescence: broad, rising towards the blue end of the band,
    ``autofluorescence`` times the sensor's peak at 500 nm.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    sensor = _gauss(wl, peak_nm, width_nm) + shoulder_ratio * _gauss(wl, peak_nm + shoulder_offset_nm, shoulder_width_nm)
    sensor = sensor / sensor.max()
    background = autofluorescence * _gauss(wl, 500.0, 60.0)
    return sensor, background


def emission_spectrum(wavelengths: np.ndarray, **kwargs) -> np.ndarray:
    """E: sensor plus background, normalised to 1 at its peak; see :func:`emission_components`."""
    sensor, background = emission_components(wavelengths, **kwargs)
    e = sensor + background
    return e / e.max()


def sensor_signature(wavelengths: np.ndarray, **kwargs) -> np.ndarray:
    """S: the sensor's share of the light at each wavelength, normalised to peak 1.

    When the sensor brightens by a factor (1 + δ), the log of the total light at λ moves by
    about δ · sensor(λ) / (sensor(λ) + background(λ)): flat where the sensor dominates,
    falling where autofluorescence does.
    """
    sensor, background = emission_components(wavelengths, **kwargs)
    share = sensor / np.maximum(sensor + background, 1e-12)
    return share / share.max()


# ----------------------------------------------------------------------------- dynamics


def _draw(rng: np.random.Generator, r: Range, *, log: bool = False) -> float:
    lo, hi = r
    if lo == hi:
        return float(lo)
    if log:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def lowpass_noise(rng: np.random.Generator, n: int, *, fs: float, cutoff_hz: float, std: float) -> np.ndarray:
    """Gaussian noise low-passed below ``cutoff_hz``, scaled to ``std``; shape ``(n,)``.

    Shaped in the frequency domain with a 2nd-order Butterworth magnitude
    ``1 / sqrt(1 + (f / fc)^4)``, on a span long enough to hold a few periods of the cutoff
    so a short window still sees slow wander rather than a constant.
    """
    if std == 0 or n == 0:
        return np.zeros(n)
    span = int(min(max(n, 4 * fs / max(cutoff_hz, 1e-6)), max(n, 1 << 15)))
    nfft = 1 << (span - 1).bit_length()
    spec = np.fft.rfft(rng.standard_normal(nfft))
    f = np.fft.rfftfreq(nfft, d=1.0 / fs)
    spec *= 1.0 / np.sqrt(1.0 + (f / cutoff_hz) ** 4)
    spec[0] = 0.0  # zero-mean over the span
    x = np.fft.irfft(spec, nfft)[:n]
    sd = np.sqrt(np.mean(np.fft.irfft(spec, nfft) ** 2))  # std of the process, not of this window
    return x * (std / sd) if sd > 0 else x


STATES = ("wake", "nrem", "rem")
# Next-state probabilities (rows: from wake, NREM, REM); a bout always ends in another state.
_STATE_NEXT = np.array([[0.0, 0.9, 0.1], [0.6, 0.0, 0.4], [0.8, 0.2, 0.0]])


def brain_states(rng: np.random.Generator, n: int, *, fs: float, level: float, dwell_s: float,
                 ramp_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Minutes-long wake / NREM / REM-like bouts as an ACh level trace, log-units.

    Bouts last an exponential time (mean ``dwell_s``; REM ``dwell_s / 2``) and follow a
    Markov chain (wake → NREM mostly, NREM → wake or REM, REM → wake mostly); ACh is
    ``level`` in wake, 0 in NREM and 0.8–1.3 × ``level`` in REM (high in wake and REM, low
    in NREM, as recorded across sleep), with ``ramp_s`` transitions. Returns ``(trace (n,),
    state index per frame (n,))``; the trace is centred on its time average.
    """
    labels = np.empty(n, dtype=np.int8)
    value = np.empty(n)
    state = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
    i = 0
    while i < n:
        mean = dwell_s / (2.0 if state == 2 else 1.0)
        length = max(1, int(round(rng.exponential(mean) * fs)))
        labels[i : i + length] = state
        value[i : i + length] = (level, 0.0, level * rng.uniform(0.8, 1.3))[state]
        i += length
        state = int(rng.choice(3, p=_STATE_NEXT[state]))
    k = max(1, int(round(ramp_s * fs)))  # smooth steps: a moving average over the ramp
    padded = np.concatenate([np.full(k, value[0]), value])
    c = np.cumsum(padded)
    trace = (c[k:] - c[:-k]) / k
    return trace - trace.mean(), labels


def release_events(
    rng: np.random.Generator, n: int, *, fs: float, rate_hz: float, amplitude: Range, decay_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson release events, each a one-frame rise and an exponential decay.

    Returns ``(trace, onsets, amplitudes)``: trace shape ``(n,)``; onsets are frame indices
    where the trace jumps by the event's amplitude (on top of what earlier events left).
    """
    count = rng.poisson(rate_hz * n / fs)
    onsets = np.sort(rng.integers(0, n, size=count)) if n > 0 else np.zeros(0, dtype=int)
    amps = np.array([_draw(rng, amplitude, log=amplitude[0] > 0) for _ in range(count)])
    impulses = np.zeros(n)
    np.add.at(impulses, onsets, amps)
    # Convolve with exp(-t/τ): a first-order IIR filter, rise within the onset frame.
    decay = np.exp(-1.0 / (decay_s * fs))
    from scipy import signal as sps  # here: importing it costs every command of the CLI 0.5 s

    trace = sps.lfilter([1.0], [1.0, -decay], impulses)
    return trace, onsets.astype(np.int64), amps


@dataclass
class SpectralInstance:
    """One synthetic recording: clean frames and everything that made them."""

    clean: np.ndarray  # (T, W) float64, counts
    wavelengths: np.ndarray  # (W,) nm
    emission: np.ndarray  # (W,) E, peak 1
    signature: np.ndarray  # (W,) S, peak 1
    eps_hbo2: np.ndarray  # (W,)
    eps_hb: np.ndarray  # (W,)
    activity: np.ndarray  # (T,) a(t): events + slow + brain states
    events: np.ndarray  # (T,) the event part of a(t)
    event_onsets: np.ndarray  # (E,) frame indices
    event_amplitudes: np.ndarray  # (E,) log-units
    hbo2: np.ndarray  # (T,) h1(t)
    hb: np.ndarray  # (T,) h2(t)
    params: dict = field(default_factory=dict)  # the values drawn for this instance
    states: np.ndarray | None = None  # (T,) brain state per frame (index into STATES), None without states

    @property
    def spectra(self) -> np.ndarray:
        """The three dynamic spectra ``(3, W)``: S, −ε_HbO₂, −ε_Hb (signs as in the model)."""
        return np.stack([self.signature, -self.eps_hbo2, -self.eps_hb])


def sample_instance(
    cfg: SpectralConfig, n_frames: int, rng: np.random.Generator, *, photons: float | None = None
) -> SpectralInstance:
    """Draw one clean recording of ``n_frames`` frames from the model ``cfg``."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    wl = cfg.wavelengths()
    fs = cfg.fs
    em_kw = dict(
        peak_nm=_draw(rng, cfg.emission_peak_nm),
        width_nm=_draw(rng, cfg.emission_width_nm),
        shoulder_offset_nm=_draw(rng, cfg.shoulder_offset_nm),
        shoulder_ratio=_draw(rng, cfg.shoulder_ratio),
        shoulder_width_nm=_draw(rng, cfg.shoulder_width_nm),
        autofluorescence=_draw(rng, cfg.autofluorescence),
    )
    emission = emission_spectrum(wl, **em_kw)
    signature = sensor_signature(wl, **em_kw)
    eps_hbo2, eps_hb = hemoglobin_extinction(wl)

    p = float(photons) if photons is not None else _draw(rng, cfg.photons, log=True)
    rate = _draw(rng, cfg.event_rate_hz)
    decay = _draw(rng, cfg.decay_s)
    events, onsets, amps = release_events(rng, n_frames, fs=fs, rate_hz=rate, amplitude=cfg.event_amplitude, decay_s=decay)
    slow_std = _draw(rng, cfg.slow_std)
    slow_fc = _draw(rng, cfg.slow_cutoff_hz)
    slow = lowpass_noise(rng, n_frames, fs=fs, cutoff_hz=slow_fc, std=slow_std)
    activity = events + slow
    # Hemodynamics drawn independently of activity (and of each other).
    hemo = []
    for _ in range(2):
        std, fc = _draw(rng, cfg.hemo_std), _draw(rng, cfg.hemo_cutoff_hz)
        hemo.append(lowpass_noise(rng, n_frames, fs=fs, cutoff_hz=fc, std=std))
    h1, h2 = hemo
    # Brain states last (a config without them draws exactly what it drew before they existed).
    labels = None
    state_level = 0.0
    if cfg.state_level[1] > 0:
        state_level, dwell = _draw(rng, cfg.state_level), _draw(rng, cfg.state_dwell_s)
        level_trace, labels = brain_states(rng, n_frames, fs=fs, level=state_level, dwell_s=dwell)
        activity = activity + level_trace

    # (T, W) = outer products of the traces with the spectra, in log space.
    log_mod = np.outer(activity, signature) - np.outer(h1, eps_hbo2) - np.outer(h2, eps_hb)
    clean = p * emission[None, :] * np.exp(log_mod)
    params = dict(photons=p, event_rate_hz=rate, decay_s=decay, slow_std=slow_std, slow_cutoff_hz=slow_fc,
                  state_level=state_level, **em_kw)
    return SpectralInstance(
        clean=clean,
        wavelengths=wl,
        emission=emission,
        signature=signature,
        eps_hbo2=eps_hbo2,
        eps_hb=eps_hb,
        activity=activity,
        events=events,
        event_onsets=onsets,
        event_amplitudes=amps,
        hbo2=h1,
        hb=h2,
        params=params,
        states=labels,
    )
