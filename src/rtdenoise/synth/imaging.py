"""Synthetic ground truth for fluorescence imaging: microscope movies of active neurons.

One frame is one image ``(H, W)``. The clean movie, in expected counts per pixel per frame
(photons when the detector's gain is 1), is

    clean(t, y, x) = B(y, x) · b(t) + Σ_n F_n(y, x) · f_n(t),       then shifted by s(t)

- ``F_n``: neuron n's footprint, peak 1: an elliptical soma, ring-like because calcium
  indicators are excluded from the nucleus (a darker disc inside), optionally with a few
  dim, smooth dendrite-like processes; edges blurred by the optics' point-spread function.
- ``f_n(t) = photons · β_n · (1 + ΔF/F_n(t)) · g(t)``: resting brightness ``β_n`` (the
  brightest neuron has 1, so ``photons`` is the resting count at its footprint peak),
  ΔF/F from Poisson spike trains (with bursts) convolved with the indicator's
  double-exponential kernel, optionally saturating.
- ``B``: neuropil, a spatially smooth haze (low-pass noise field), modulated by a slow
  factor ``b(t)``; ``g(t)`` (slow drift of laser power or focus, times photobleaching)
  multiplies everything, and is included in ``b`` and every ``f_n``.
- ``s(t)``: optional rigid sub-pixel motion, a slow random wander (Fourier shift on a
  canvas with a margin, so nothing wraps in from the opposite edge).

Every range below is domain randomization: each scene draws its own value (per scene or
per neuron, as each field says), so a model trained on the draws works on preparations it
has not seen. A range ``(x, x)`` fixes the value. Footprints are rendered once, sparse,
and the movie is one sparse-times-dense product, so instances are cheap to make on the fly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, sparse
from scipy.special import erf

from rtdenoise.synth.spectral import Range, _draw, lowpass_noise

# Fields drawn log-uniformly: they span decades.
_LOG_FIELDS = ("photons", "fs", "rate_hz", "rise_s", "decay_s", "amplitude_dff")
# Fields that must be strictly positive (a scale, a rate or a divisor).
_POSITIVE = ("photons", "fs", "decay_s", "blur_px", "process_width_px", "neuropil_scale_px",
             "drift_cutoff_hz", "neuropil_cutoff_hz", "motion_cutoff_hz")


@dataclass
class ImagingConfig:
    """Ranges of the imaging scene model; each scene draws one value per field.

    Lengths in pixels, times in s, rates in Hz, brightness in counts per pixel per frame.
    The defaults describe two-photon calcium imaging of a cortical layer at ~1 µm/px.
    """

    shape: tuple[int, int] = (128, 128)  # frame (H, W); 128² training patches, any size works
    fs: Range = (10.0, 90.0)  # frame rate, log-uniform: median 30 Hz (resonant 2p); galvo to fast camera

    # Brightness (counts = photons at gain 1), log-uniform; two-photon: 0.5–20, camera: 100s–1000s.
    photons: Range = (0.5, 20.0)  # resting count at the brightest soma's footprint peak
    brightness: Range = (0.2, 1.0)  # per neuron: resting brightness relative to the brightest

    # Somata: where and what shape.
    density: Range = (5.0, 30.0)  # somata per 10⁴ px² (per scene); 0 gives a scene without neurons
    soma_radius_px: Range = (4.0, 8.0)  # per scene mean radius; each neuron varies by ~10 %
    ellipticity: Range = (1.0, 1.5)  # per neuron axis ratio, random orientation, area kept
    nucleus_fraction: Range = (0.45, 0.7)  # per neuron nucleus radius / soma radius
    nucleus_brightness: Range = (0.1, 0.6)  # per neuron nucleus / cytoplasm brightness (nuclear exclusion)
    blur_px: Range = (0.5, 1.2)  # per scene Gaussian PSF sigma softening every edge

    # Processes: short smooth dendrite-like streaks leaving the soma, dimmer than it.
    processes: Range = (0.0, 2.0)  # per scene mean number per neuron (Poisson); (0, 0) turns them off
    process_length_px: Range = (8.0, 30.0)  # per process
    process_width_px: Range = (0.6, 1.2)  # per scene Gaussian sigma of the streak
    process_brightness: Range = (0.1, 0.4)  # per process, relative to the soma at rest

    # Neuropil: smooth haze = level · (1 + contrast · field), times a slow factor over time.
    neuropil_level: Range = (0.05, 0.4)  # mean haze relative to `photons`
    neuropil_contrast: Range = (0.1, 0.5)  # relative spatial std of the haze
    neuropil_scale_px: Range = (8.0, 40.0)  # spatial correlation length (Gaussian sigma) of the field
    neuropil_std: Range = (0.0, 0.1)  # relative std of its slow temporal factor
    neuropil_cutoff_hz: Range = (0.05, 1.0)  # bandwidth of that factor

    # Spikes: Poisson events per neuron, some of them bursts.
    rate_hz: Range = (0.05, 2.0)  # per neuron rate of events (a spike or a burst), log-uniform
    burst_fraction: Range = (0.0, 0.3)  # per scene share of events that are bursts
    burst_size: Range = (2.0, 6.0)  # spikes in one burst, per burst (integer, uniform)

    # Indicator kinetics (per scene): h(s) = exp(-s/decay) - exp(-s/rise), peak 1.
    # jGCaMP8f ~5/70 ms, GCaMP6f ~20/300 ms, jGCaMP7f ~30/270 ms, GCaMP6s ~150 ms/1.5 s.
    rise_s: Range = (0.005, 0.2)  # rise time constant, log-uniform; capped at decay/4
    decay_s: Range = (0.05, 2.0)  # decay time constant, log-uniform
    amplitude_dff: Range = (0.05, 1.0)  # per neuron ΔF/F at the peak of one spike, log-uniform
    amplitude_cv: Range = (0.0, 0.3)  # per scene spike-to-spike variation of that amplitude
    saturation: Range = (0.0, 0.3)  # per scene 1/(max ΔF/F): ΔF/F = x / (1 + saturation · x); 0 is linear

    # Slow changes common to the whole field of view.
    drift_std: Range = (0.0, 0.05)  # relative std of slow drift (laser power, focus)
    drift_cutoff_hz: Range = (0.005, 0.05)  # its bandwidth
    bleach_rate: Range = (0.0, 1e-3)  # photobleaching, 1/s: brightness ∝ exp(-rate · t)

    # Rigid motion: a slow sub-pixel wander of the whole frame.
    motion_px: Range = (0.0, 1.0)  # std of the shift along each axis; 0 means no motion
    motion_cutoff_hz: Range = (0.1, 1.0)  # bandwidth of the wander

    @classmethod
    def steady_light(cls, **changes) -> "ImagingConfig":
        """A scene with no neurons: uniform, steady light of ``photons`` counts everywhere.

        What a denoiser is checked on to show it invents nothing.
        """
        base = cls(density=(0.0, 0.0), neuropil_level=(1.0, 1.0), neuropil_contrast=(0.0, 0.0),
                   neuropil_std=(0.0, 0.0), drift_std=(0.0, 0.0), bleach_rate=(0.0, 0.0), motion_px=(0.0, 0.0))
        return dataclasses.replace(base, **changes)

    def replace(self, **changes) -> "ImagingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImagingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ImagingConfig fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) for k, v in d.items()})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and the value received."""
        s = self.shape
        if len(s) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 4 for v in s):
            raise ValueError(f"shape must be (H, W) with integers >= 4, got {s}")
        for f in dataclasses.fields(self):
            if f.name == "shape":
                continue
            v = getattr(self, f.name)
            if len(v) != 2 or not 0 <= v[0] <= v[1]:
                raise ValueError(f"{f.name} must be a range (low, high) with 0 <= low <= high, got {v}")
            if f.name in _POSITIVE and v[0] <= 0:
                raise ValueError(f"{f.name} must be > 0, got {v}")
            if f.name in _LOG_FIELDS and v[0] == 0 < v[1]:
                raise ValueError(f"{f.name} is drawn log-uniformly: its low end must be > 0 (or use (0, 0)), got {v}")
        checks = [
            ("ellipticity", self.ellipticity[0] >= 1.0, "an axis ratio >= 1"),
            ("nucleus_fraction", self.nucleus_fraction[1] < 1.0, "below 1 (the nucleus fits in the soma)"),
            ("burst_fraction", self.burst_fraction[1] <= 1.0, "a fraction <= 1"),
            ("burst_size", self.burst_size[0] >= 1.0, "at least 1 spike"),
            ("brightness", self.brightness[1] > 0, "above 0 somewhere"),
        ]
        if self.density[1] > 0:
            checks.append(("soma_radius_px", self.soma_radius_px[0] > 0, "> 0 px"))
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)}")


@dataclass
class ImagingInstance:
    """One synthetic movie and everything that made it.

    Without motion, ``clean == background · background_trace + Σ footprints · traces``
    exactly. With motion, each frame of that sum is shifted by ``shifts[t]``; footprints
    stay at the reference position, and neurons with under a quarter of their footprint
    inside the frame are not listed (their light is still in the movie).
    """

    clean: np.ndarray  # (T, H, W) float32, expected counts per pixel per frame
    footprints_sparse: sparse.csr_matrix  # (N, H·W) float32, each neuron's spatial weight, peak 1
    traces: np.ndarray  # (N, T) float32, counts at each footprint's peak: photons·β·(1+ΔF/F)·g
    dff: np.ndarray  # (N, T) float32, ΔF/F of each neuron (after saturation)
    spikes: np.ndarray  # (N, T) int32, spikes per frame
    background: np.ndarray  # (H, W) float32, neuropil haze, counts
    background_trace: np.ndarray  # (T,) float32, its factor over time (g included)
    drift: np.ndarray  # (T,) float32, g(t): drift × bleaching, common to everything
    shifts: np.ndarray  # (T, 2) float32, (dy, dx) px of each frame
    centers: np.ndarray  # (N, 2) float32, (y, x) px of each soma
    fs: float  # frame rate, Hz
    params: dict = field(default_factory=dict)  # the per-scene values drawn

    @property
    def footprints(self) -> np.ndarray:
        """Dense footprints ``(N, H, W)`` float32 (N·H·W·4 bytes; built on each access)."""
        _, h, w = self.clean.shape
        return self.footprints_sparse.toarray().reshape(-1, h, w)

    @property
    def n_neurons(self) -> int:
        return self.footprints_sparse.shape[0]


# ----------------------------------------------------------------------------- space


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], *, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``scale_px``; ``(H, W)``.

    White noise filtered by a Gaussian of sigma ``scale_px`` in the frequency domain
    (periodic over the frame, which a smooth haze does not mind).
    """
    h, w = shape
    spec = sfft.rfft2(rng.standard_normal((h, w)))
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    spec *= np.exp(-2.0 * (np.pi * scale_px) ** 2 * (fy**2 + fx**2))
    spec[0, 0] = 0.0
    x = sfft.irfft2(spec, s=(h, w))
    sd = x.std()
    return x / sd if sd > 0 else x


def place_somata(rng: np.random.Generator, n: int, shape: tuple[int, int], *, min_dist: float) -> np.ndarray:
    """Up to ``n`` centres ``(n', 2)`` (y, x), uniform over ``shape``, at least ``min_dist`` apart.

    Greedy: candidates closer than ``min_dist`` to an accepted centre are dropped, out of
    ``3 n`` tries, so a density the field cannot hold gives fewer somata, never a hang.
    """
    cand = rng.uniform(0, 1, (3 * n, 2)) * np.array(shape, dtype=float)
    kept = np.empty((n, 2))
    k = 0
    for c in cand:
        if k == n:
            break
        if k == 0 or np.min(np.sum((kept[:k] - c) ** 2, axis=1)) >= min_dist**2:
            kept[k] = c
            k += 1
    return kept[:k]


def render_footprint(
    rng: np.random.Generator, center: tuple[float, float], *, radius: float, ellipticity: float, angle: float,
    nucleus_fraction: float, nucleus_brightness: float, blur: float, n_processes: int = 0,
    process_length: Range = (8.0, 30.0), process_width: float = 0.8, process_brightness: Range = (0.1, 0.4),
) -> tuple[np.ndarray, int, int]:
    """One neuron's footprint on a local patch; returns ``(patch, y0, x0)``, patch peak 1.

    ``patch[i, j]`` is the weight at pixel ``(y0 + i, x0 + j)`` (whole-pixel coordinates of
    the frame; the patch may reach outside it). The soma is an ellipse (axes
    ``radius · sqrt(ellipticity)`` and ``radius / sqrt(ellipticity)``) minus a darker
    nucleus, both with edges blurred by a Gaussian of sigma ``blur`` (the error function
    is the exact blur of a straight edge).
    """
    cy, cx = center
    a, b = radius * np.sqrt(ellipticity), radius / np.sqrt(ellipticity)
    reach = a + 3.0 * blur + 1.0 + (process_length[1] + 3.0 * process_width if n_processes else 0.0)
    half = int(np.ceil(reach))
    y0, x0 = int(np.floor(cy)) - half, int(np.floor(cx)) - half
    size = 2 * half + 2
    dy = (np.arange(y0, y0 + size) - cy)[:, None]
    dx = (np.arange(x0, x0 + size) - cx)[None, :]
    ca, sa = np.cos(angle), np.sin(angle)
    rho = np.sqrt(((dx * ca + dy * sa) / a) ** 2 + ((-dx * sa + dy * ca) / b) ** 2)  # 1 on the membrane
    k = radius / (np.sqrt(2.0) * blur)
    soma = 0.5 * (1.0 + erf((1.0 - rho) * k))
    nucleus = 0.5 * (1.0 + erf((nucleus_fraction - rho) * k))
    patch = soma - (1.0 - nucleus_brightness) * nucleus
    patch /= patch.max()
    if n_processes:
        proc = np.zeros_like(patch)
        step = 0.5  # px between points along a streak
        for _ in range(n_processes):
            phi = rng.uniform(0, 2 * np.pi)
            n = max(2, int(_draw(rng, process_length) / step))
            heading = phi + 0.3 * rng.standard_normal() + np.cumsum(0.08 * rng.standard_normal(n))
            start = np.array([cy + 0.9 * radius * np.sin(phi), cx + 0.9 * radius * np.cos(phi)])
            pts = start + step * np.cumsum(np.stack([np.sin(heading), np.cos(heading)], 1), axis=0)
            weight = _draw(rng, process_brightness) * np.linspace(1.0, 0.2, n)  # tapering
            py, px = pts[:, 0] - y0, pts[:, 1] - x0
            iy, ix = np.floor(py).astype(int), np.floor(px).astype(int)
            fy, fx = py - iy, px - ix
            ok = (iy >= 0) & (ix >= 0) & (iy < size - 1) & (ix < size - 1)
            corners = ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx))
            for oy, ox, wt in corners:
                np.add.at(proc, (iy[ok] + oy, ix[ok] + ox), (weight * wt)[ok])
        # A line of density 1/step blurred by a 2-D Gaussian has ridge height 1/(step·σ·√(2π)).
        proc = ndimage.gaussian_filter(proc, process_width) * (step * process_width * np.sqrt(2 * np.pi))
        patch = np.maximum(patch, proc)  # streaks fade into the soma rather than add onto it
    return patch, y0, x0


# ----------------------------------------------------------------------------- time


def spike_trains(
    rng: np.random.Generator, rates_hz: np.ndarray, n: int, *, fs: float, burst_fraction: float, burst_size: Range
) -> np.ndarray:
    """Spikes per frame ``(N, n)`` int32: Poisson events at ``rates_hz`` (N,), some of them bursts."""
    events = rng.poisson(np.asarray(rates_hz)[:, None] / fs, (len(rates_hz), n))
    burst = (rng.random(events.shape) < burst_fraction) & (events > 0)
    extra = rng.integers(int(burst_size[0]), int(burst_size[1]) + 1, events.shape) - 1
    return (events + burst * extra).astype(np.int32)


def calcium_dff(
    spikes: np.ndarray, *, fs: float, rise_s: float, decay_s: float, amplitude: np.ndarray,
    rng: np.random.Generator | None = None, amplitude_cv: float = 0.0, saturation: float = 0.0,
) -> np.ndarray:
    """ΔF/F ``(N, T)`` from spikes ``(N, T)``: double-exponential kernel, peak ``amplitude`` (N,).

    A spike at a uniformly random time within its frame adds
    ``A · (exp(-s/decay) - exp(-s/rise)) / peak`` at the frame's end, ``s`` seconds later:
    two first-order filters, so the cost is O(N·T) whatever the decay. Saturation maps
    ``x → x / (1 + saturation · x)``.
    """
    n, t = spikes.shape
    if n == 0:
        return np.zeros((0, t))
    w = spikes * np.asarray(amplitude, dtype=float)[:, None]
    if amplitude_cv > 0 and rng is not None:
        w = w * np.exp(amplitude_cv * rng.standard_normal(w.shape) - 0.5 * amplitude_cv**2)
    u = rng.random(w.shape) if rng is not None else np.zeros(w.shape)  # spike time within its frame
    if not 0 <= rise_s < decay_s:
        raise ValueError(f"rise_s must be in [0, decay_s), got rise {rise_s} s and decay {decay_s} s")
    if rise_s > 0:
        tp = np.log(decay_s / rise_s) * decay_s * rise_s / (decay_s - rise_s)  # time of the kernel's peak
        peak = np.exp(-tp / decay_s) - np.exp(-tp / rise_s)
        r = np.exp(-1.0 / (rise_s * fs))
    else:  # an instantaneous rise: a plain exponential, peak 1 at the spike
        peak, r = 1.0, 0.0
    from scipy import signal as sps  # here: importing it costs every command of the CLI 0.5 s

    d = np.exp(-1.0 / (decay_s * fs))
    x = sps.lfilter([1.0], [1.0, -d], w * d ** (1.0 - u), axis=1)
    x -= sps.lfilter([1.0], [1.0, -r], w * r ** (1.0 - u), axis=1)
    x /= peak
    return x / (1.0 + saturation * x) if saturation > 0 else x


# ----------------------------------------------------------------------------- scene


def _fourier_shift(movie: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each frame of ``movie`` (T, H, W) moved by ``shifts[t]`` = (dy, dx) px (periodic)."""
    _, h, w = movie.shape
    spec = sfft.rfft2(movie, axes=(1, 2))
    ky = sfft.fftfreq(h).astype(np.float32)
    kx = sfft.rfftfreq(w).astype(np.float32)
    spec *= np.exp(-2j * np.pi * shifts[:, 0, None] * ky[None, :]).astype(np.complex64)[:, :, None]
    spec *= np.exp(-2j * np.pi * shifts[:, 1, None] * kx[None, :]).astype(np.complex64)[:, None, :]
    return sfft.irfft2(spec, s=(h, w), axes=(1, 2))


def sample_scene(
    config: ImagingConfig, n_frames: int, rng: np.random.Generator, *,
    photons: float | None = None, shape: tuple[int, int] | None = None,
) -> ImagingInstance:
    """Draw one clean movie of ``n_frames`` frames from the model ``config``.

    Parameters
    ----------
    config : ImagingConfig
        The scene model and its randomization ranges.
    n_frames : int
        Frames T.
    rng : numpy.random.Generator
        All randomness comes from it: the same state gives the same scene.
    photons : float, optional
        Resting counts at the brightest soma's footprint peak; drawn from
        ``config.photons`` (log-uniform) when not given.
    shape : (int, int), optional
        Frame shape (H, W); ``config.shape`` when not given.

    Returns
    -------
    ImagingInstance
        ``clean`` (T, H, W) float32 and the footprints, traces and spikes that made it.

    Examples
    --------
    >>> inst = sample_scene(ImagingConfig(), 32, np.random.default_rng(0), shape=(64, 64))
    >>> inst.clean.shape, inst.footprints.shape[1:]
    ((32, 64, 64), (64, 64))
    """
    c = config
    h, w = (int(v) for v in (shape if shape is not None else c.shape))
    if shape is not None:
        c = c.replace(shape=(h, w))
    c.validate()
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if photons is not None and not photons > 0:
        raise ValueError(f"photons must be > 0 counts, got {photons}")
    fs = _draw(rng, c.fs, log=True)
    p = float(photons) if photons is not None else _draw(rng, c.photons, log=True)
    t_s = np.arange(n_frames) / fs

    # Motion first: it sets the canvas margin the scene is drawn on.
    motion = _draw(rng, c.motion_px)
    margin = int(np.ceil(4.0 * motion)) + 2 if motion > 0 else 0
    # The canvas: the frame plus a margin on every side, rounded up to sizes the FFT is fast at.
    hc, wc = (sfft.next_fast_len(v + 2 * margin, real=True) if margin else v for v in (h, w))
    shifts = np.zeros((n_frames, 2))
    if motion > 0:
        fc = _draw(rng, c.motion_cutoff_hz)
        for ax in range(2):
            shifts[:, ax] = lowpass_noise(rng, n_frames, fs=fs, cutoff_hz=fc, std=motion)
        shifts = np.clip(shifts, -(margin - 1), margin - 1)

    # Somata: positions, shapes, footprints as one sparse (N, hc·wc) matrix.
    r0 = _draw(rng, c.soma_radius_px)
    density = _draw(rng, c.density)
    n_target = rng.poisson(density * hc * wc / 1e4) if density > 0 else 0
    centers = place_somata(rng, n_target, (hc, wc), min_dist=1.6 * r0)
    n = len(centers)
    blur = _draw(rng, c.blur_px)
    n_proc_mean = _draw(rng, c.processes)
    proc_width = _draw(rng, c.process_width_px)
    rows, cols, vals, inside = [], [], [], np.zeros(n)
    for i, ctr in enumerate(centers):
        patch, y0, x0 = render_footprint(
            rng, tuple(ctr), radius=r0 * np.exp(0.1 * rng.standard_normal()), ellipticity=_draw(rng, c.ellipticity),
            angle=rng.uniform(0, np.pi), nucleus_fraction=_draw(rng, c.nucleus_fraction),
            nucleus_brightness=_draw(rng, c.nucleus_brightness), blur=blur, n_processes=rng.poisson(n_proc_mean),
            process_length=c.process_length_px, process_width=proc_width, process_brightness=c.process_brightness,
        )
        yy, xx = np.nonzero(patch > 1e-3)
        v = patch[yy, xx]
        yy, xx = yy + y0, xx + x0
        ok = (yy >= 0) & (yy < hc) & (xx >= 0) & (xx < wc)
        yy, xx, v = yy[ok], xx[ok], v[ok]
        crop = (yy >= margin) & (yy < margin + h) & (xx >= margin) & (xx < margin + w)
        inside[i] = v[crop].sum() / max(v.sum(), 1e-12)
        rows.append(np.full(len(v), i))
        cols.append(yy * wc + xx)
        vals.append(v)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    rows, cols, vals = cat(rows, np.int64), cat(cols, np.int64), cat(vals, np.float32)
    fp = sparse.csr_matrix((vals, (rows, cols)), shape=(n, hc * wc), dtype=np.float32)

    # Activity: spikes → ΔF/F → counts at the footprint peak.
    rates = np.exp(rng.uniform(*np.log(np.maximum(c.rate_hz, 1e-12)), n)) if c.rate_hz[1] > 0 else np.zeros(n)
    burst_fraction = _draw(rng, c.burst_fraction)
    spikes = spike_trains(rng, rates, n_frames, fs=fs, burst_fraction=burst_fraction, burst_size=c.burst_size)
    decay = _draw(rng, c.decay_s, log=True)
    rise = min(_draw(rng, c.rise_s, log=True), decay / 4.0)
    amp = np.exp(rng.uniform(*np.log(np.maximum(c.amplitude_dff, 1e-12)), n)) if c.amplitude_dff[1] > 0 else np.zeros(n)
    cv, sat = _draw(rng, c.amplitude_cv), _draw(rng, c.saturation)
    dff = calcium_dff(spikes, fs=fs, rise_s=rise, decay_s=decay, amplitude=amp, rng=rng, amplitude_cv=cv,
                      saturation=sat)
    beta = rng.uniform(*c.brightness, n)
    beta = beta / beta.max() if n and beta.max() > 0 else beta
    drift_std, drift_fc, bleach = _draw(rng, c.drift_std), _draw(rng, c.drift_cutoff_hz), _draw(rng, c.bleach_rate)
    g = np.maximum(1.0 + lowpass_noise(rng, n_frames, fs=fs, cutoff_hz=drift_fc, std=drift_std), 0.05)
    g = g * np.exp(-bleach * t_s)  # (T,) drift × photobleaching
    traces = (p * beta[:, None] * (1.0 + dff) * g[None, :]).astype(np.float32)  # (N, T)

    # Neuropil: smooth haze × slow factor.
    np_level, np_contrast = _draw(rng, c.neuropil_level), _draw(rng, c.neuropil_contrast)
    np_scale, np_std = _draw(rng, c.neuropil_scale_px), _draw(rng, c.neuropil_std)
    np_fc = _draw(rng, c.neuropil_cutoff_hz)
    field_ = smooth_field(rng, (hc, wc), scale_px=np_scale) if np_contrast > 0 else np.zeros((hc, wc))
    bg = (p * np_level * np.maximum(1.0 + np_contrast * field_, 0.0)).astype(np.float32)  # (hc, wc)
    bg_trace = np.maximum(1.0 + lowpass_noise(rng, n_frames, fs=fs, cutoff_hz=np_fc, std=np_std), 0.0)
    bg_trace = (bg_trace * g).astype(np.float32)  # (T,)

    # The movie: background outer product plus sparse (hc·wc, N) × dense (N, T), in blocks of
    # pixels so each (pixels, T) product is transposed into place while it is in cache.
    movie = np.empty((n_frames, hc * wc), dtype=np.float32)  # (T, hc·wc)
    fpt = fp.T.tocsr()  # (hc·wc, N)
    bgf = bg.reshape(-1)
    step = 8192
    for s in range(0, hc * wc, step):
        block = movie[:, s : s + step]
        np.multiply(bg_trace[:, None], bgf[None, s : s + step], out=block)
        if n:
            block += (fpt[s : s + step] @ traces).T
    movie = movie.reshape(n_frames, hc, wc)
    if motion > 0:
        movie = _fourier_shift(movie, shifts.astype(np.float32))
    clean = np.maximum(movie[:, margin : margin + h, margin : margin + w], 0.0, dtype=np.float32)

    # Footprints on the frame, at the reference position (zero shift).
    keep = np.nonzero(inside >= 0.25)[0]
    fp = fp[keep]
    if margin:
        coo = fp.tocoo()
        yy, xx = coo.col // wc - margin, coo.col % wc - margin
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        fp = sparse.csr_matrix((coo.data[ok], (coo.row[ok], yy[ok] * w + xx[ok])), shape=(len(keep), h * w),
                               dtype=np.float32)
    params = dict(fs=fs, photons=p, n_neurons=len(keep), soma_radius_px=r0, density=density, blur_px=blur,
                  processes=n_proc_mean, rise_s=rise, decay_s=decay, amplitude_cv=cv, saturation=sat,
                  burst_fraction=burst_fraction, neuropil_level=np_level, neuropil_contrast=np_contrast,
                  neuropil_scale_px=np_scale, neuropil_std=np_std, drift_std=drift_std, bleach_rate=bleach,
                  motion_px=motion, margin_px=margin)
    return ImagingInstance(
        clean=clean,
        footprints_sparse=fp,
        traces=traces[keep],
        dff=dff[keep].astype(np.float32),
        spikes=spikes[keep],
        background=np.ascontiguousarray(bg[margin : margin + h, margin : margin + w]),
        background_trace=bg_trace,
        drift=g.astype(np.float32),
        shifts=shifts.astype(np.float32),
        centers=(centers[keep] - margin).astype(np.float32).reshape(-1, 2),
        fs=fs,
        params=params,
    )
