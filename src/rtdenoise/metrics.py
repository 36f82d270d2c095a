"""Quality metrics, shared by tests, benchmarks and the demo.

Frames are ``(T, W)`` arrays, time first (spectra of a photometry recording).

Dtype policy: float32 frames give float32 results; any other integer or float dtype
gives float64. Work is done in float64. Every function returns a new array.

Signal model, for :func:`unmix`: a recording of ``K`` spectral components is

    clean(t, λ) = F0(λ) · exp(Σ_k c_k(t) · spectra[k](λ))

where ``F0`` is the baseline spectrum and ``c_k(t)`` the activity trace of component ``k``
(a sensor's fluorescence change, oxy- and deoxy-hemoglobin absorption).

Classical denoisers to compare against live in :mod:`rtdenoise.baselines`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rtdenoise.io import validate_frames

__all__ = [
    "detect_events",
    "event_amplitudes",
    "percentiles",
    "snr_db",
    "trace_correlation",
    "unmix",
]


# --------------------------------------------------------------------------- checks


def _frames2d(frames, name: str = "frames") -> np.ndarray:
    """Validated (T, W) frames as an array (no copy)."""
    arr = validate_frames(np.asarray(frames), name=name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be (T, W) spectra, time first; got shape {arr.shape}. "
            f"For (T, H, W) images reshape to (T, H * W) first"
        )
    return arr


def _out_dtype(arr: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)


def _trace(trace, name: str = "trace") -> np.ndarray:
    arr = np.asarray(trace)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (T,), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n = int(np.count_nonzero(~np.isfinite(arr)))
        first = int(np.argmax(~np.isfinite(arr)))
        raise ValueError(f"{name} has {n} non-finite values; the first is at frame {first}")
    return arr.astype(np.float64)


def _positive(value, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def _same_shape(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {a.shape} and {b.shape}")


# --------------------------------------------------------------------------- metrics


def snr_db(estimate, clean) -> float:
    """SNR of the dynamic part of a recording, in dB.

    ``10 log10( Σ (c - mean_t c)² / Σ (x - c)² )``: the signal is the clean recording's
    variation around its per-bin temporal mean, so a large steady baseline does not
    inflate the score.

    Parameters
    ----------
    estimate, clean : array_like
        Same shape, time first: ``(T,)`` traces, ``(T, W)`` or ``(T, H, W)`` frames.

    Returns
    -------
    float
        ``inf`` when `estimate` equals `clean`; ``-inf`` when `clean` is constant in
        time but `estimate` is not.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.array([[0.0], [2.0]])          # signal power 2
    >>> snr_db(clean + 1.0, clean)                # error power 2 -> 0 dB
    0.0
    """
    x = np.asarray(estimate)
    c = np.asarray(clean)
    _same_shape(x, c, "estimate", "clean")
    for arr, nm in ((x, "estimate"), (c, "clean")):
        if arr.ndim < 1 or arr.shape[0] < 1:
            raise ValueError(f"{nm} must have a time axis first, got shape {arr.shape}")
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"{nm} must be numeric, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            n = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"{nm} has {n} non-finite values (NaN or inf)")
    x = x.astype(np.float64)
    c = c.astype(np.float64)
    signal = float(np.sum((c - c.mean(axis=0)) ** 2))
    error = float(np.sum((x - c) ** 2))
    if error == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / error)


def unmix(frames, spectra, *, baseline=None, eps: float = 1e-3) -> np.ndarray:
    """Least-squares activity traces of known spectral components.

    Each frame's log ratio to the baseline, ``y = log(max(x, eps·F0) / F0)``, is
    regressed on the `K` spectra plus a constant column (a wavelength-flat change).

    Parameters
    ----------
    frames : array_like, shape (T, W)
        Positive fluorescence spectra, time first.
    spectra : array_like, shape (K, W)
        The components' spectral shapes; linearly independent of each other and of a
        constant.
    baseline : array_like, shape (W,), optional
        ``F0``, positive. Default: the per-bin temporal mean of `frames`; the traces are
        then exact up to a constant offset per component (the model's mean level), which
        correlation and event amplitudes ignore.
    eps : float, default 1e-3
        Floor, as a fraction of ``F0``, applied before the log so that noisy frames at or
        below zero stay finite.

    Returns
    -------
    numpy.ndarray, shape (T, K)
        Coefficients ``c_k(t)``; float64 (float32 for float32 frames).

    Examples
    --------
    >>> import numpy as np
    >>> lam = np.linspace(0, 1, 50)
    >>> spectra = np.stack([np.exp(-(lam - 0.3) ** 2 / 0.01), lam])
    >>> c = np.stack([np.sin(np.arange(20)), np.cos(np.arange(20))], axis=1)
    >>> f0 = 100 + 10 * lam
    >>> frames = f0 * np.exp(c @ spectra)
    >>> np.allclose(unmix(frames, spectra, baseline=f0), c)
    True
    """
    x = _frames2d(frames)
    s = np.asarray(spectra, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] != x.shape[1]:
        raise ValueError(
            f"spectra must be (K, W) with W = {x.shape[1]} bins like the frames, "
            f"got shape {np.shape(spectra)}"
        )
    if not np.isfinite(s).all():
        raise ValueError("spectra has NaN or inf values")
    k, w = s.shape
    eps = _positive(eps, "eps")
    xf = x.astype(np.float64)
    if baseline is None:
        f0 = xf.mean(axis=0)
    else:
        f0 = np.asarray(baseline, dtype=np.float64)
        if f0.shape != (w,):
            raise ValueError(f"baseline must have shape ({w},), got {f0.shape}")
    if not (np.isfinite(f0).all() and (f0 > 0).all()):
        bad = int(np.argmax(~(np.isfinite(f0) & (f0 > 0))))
        raise ValueError(
            f"the baseline must be finite and positive in every bin; bin {bad} is "
            f"{f0[bad]!r}. Unmixing needs fluorescence (counts above the dark level), "
            f"not dark-subtracted noise around zero"
        )
    design = np.concatenate([s.T, np.ones((w, 1))], axis=1)  # (W, K+1)
    if w < k + 1 or np.linalg.matrix_rank(design) < k + 1:
        raise ValueError(
            f"the {k} spectra and a constant column are linearly dependent over {w} "
            f"bins; drop a component or remove its constant part"
        )
    y = np.log(np.maximum(xf, eps * f0) / f0)  # (T, W)
    coef, *_ = np.linalg.lstsq(design, y.T, rcond=None)  # (K+1, T)
    return coef[:k].T.astype(_out_dtype(x))


def trace_correlation(estimate, true_trace, spectra, *, index: int = 0, baseline=None) -> float:
    """Pearson correlation between an unmixed component trace and the true one.

    Parameters
    ----------
    estimate : array_like, shape (T, W)
        Denoised (or raw) frames.
    true_trace : array_like, shape (T,)
        Ground-truth activity ``c_index(t)``; must not be constant.
    spectra : array_like, shape (K, W)
        As for :func:`unmix`.
    index : int, default 0
        Which component to compare.
    baseline : array_like, shape (W,), optional
        As for :func:`unmix`.

    Returns
    -------
    float
        In [-1, 1]; NaN if the unmixed trace is exactly constant.
    """
    x = _frames2d(estimate, "estimate")
    truth = _trace(true_trace, "true_trace")
    if truth.shape[0] != x.shape[0]:
        raise ValueError(
            f"true_trace has {truth.shape[0]} frames but estimate has {x.shape[0]}"
        )
    k = np.atleast_2d(np.asarray(spectra)).shape[0]
    if not isinstance(index, (int, np.integer)) or not -k <= index < k:
        raise ValueError(f"index must be an integer in [0, {k}) for {k} spectra, got {index!r}")
    if np.ptp(truth) == 0:
        raise ValueError("true_trace is constant; its correlation is undefined")
    est = unmix(x, spectra, baseline=baseline)[:, index].astype(np.float64)
    if np.ptp(est) == 0:
        return math.nan
    a = est - est.mean()
    b = truth - truth.mean()
    return float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b)))


def detect_events(
    trace, *, fs: float, threshold: float | None = None, min_separation_s: float = 1.0
) -> np.ndarray:
    """Onsets of rising transients in a 1-D trace.

    A rise is a first difference ``trace[i] - trace[i-1]`` above `threshold`; its onset is
    frame ``i``, the first frame at the new level. Rises less than `min_separation_s`
    after an accepted onset belong to that event (a transient rising over several
    frames counts once).

    Parameters
    ----------
    trace : array_like, shape (T,)
        E.g. a column of :func:`unmix`.
    fs : float
        Frame rate in Hz.
    threshold : float, optional
        Minimum frame-to-frame rise. Default: 5 × a robust noise standard deviation of
        the first difference, ``1.4826 · MAD`` (the plain standard deviation if the MAD
        is zero). Being relative to the trace's own noise, the default adapts to each
        trace; to compare raw and denoised traces on one scale, pass the same value.
    min_separation_s : float, default 1.0
        Seconds within which rises merge into one event.

    Returns
    -------
    numpy.ndarray of int
        Onset frame indices, increasing.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> trace = 0.01 * rng.standard_normal(100)
    >>> trace[40:] += 1.0
    >>> detect_events(trace, fs=5.0).tolist()
    [40]
    """
    x = _trace(trace)
    fs = _positive(fs, "fs")
    min_sep = _positive(min_separation_s, "min_separation_s", allow_zero=True)
    if x.shape[0] < 2:
        return np.zeros(0, dtype=np.intp)
    d = np.diff(x)
    if threshold is None:
        sigma = 1.4826 * float(np.median(np.abs(d - np.median(d))))
        if sigma == 0.0:
            sigma = float(np.std(d))
        if sigma == 0.0:  # a constant trace has no transients
            return np.zeros(0, dtype=np.intp)
        thr = 5.0 * sigma
    else:
        thr = _positive(threshold, "threshold")
    candidates = np.flatnonzero(d > thr) + 1  # onset = first frame after the rise
    sep = min_sep * fs  # in frames
    events: list[int] = []
    for i in candidates:
        if not events or i - events[-1] >= sep:
            events.append(int(i))
    return np.asarray(events, dtype=np.intp)


def event_amplitudes(trace, event_frames, *, fs: float, window_s: float = 1.0) -> np.ndarray:
    """Height of each transient: peak after onset minus the level just before.

    Parameters
    ----------
    trace : array_like, shape (T,)
    event_frames : array_like of int
        Onset frames, e.g. from :func:`detect_events`.
    fs : float
        Frame rate in Hz.
    window_s : float, default 1.0
        The peak is the maximum over ``[onset, onset + window_s · fs)`` (at least one
        frame); the level before is the mean of the (up to) 2 frames before onset, or
        the onset frame itself for an onset at frame 0.

    Returns
    -------
    numpy.ndarray, shape (n_events,)
        float64.

    Examples
    --------
    >>> import numpy as np
    >>> trace = np.r_[np.zeros(10), np.full(10, 3.0)]
    >>> event_amplitudes(trace, [10], fs=5.0).tolist()
    [3.0]
    """
    x = _trace(trace)
    fs = _positive(fs, "fs")
    window_s = _positive(window_s, "window_s")
    ev = np.asarray(event_frames)
    if ev.ndim != 1 or (ev.size and ev.dtype.kind not in "iu"):
        raise ValueError(
            f"event_frames must be a 1-D sequence of integer frame indices, got "
            f"shape {ev.shape} dtype {ev.dtype}"
        )
    ev = ev.astype(np.intp)
    t = x.shape[0]
    if ev.size and (ev.min() < 0 or ev.max() >= t):
        raise ValueError(f"event_frames must lie in [0, {t}), got values {ev.min()}..{ev.max()}")
    n = max(1, int(round(window_s * fs)))
    out = np.empty(ev.shape[0], dtype=np.float64)
    for j, e in enumerate(ev):
        before = x[max(e - 2, 0) : e] if e > 0 else x[:1]
        out[j] = x[e : e + n].max() - before.mean()
    return out


def _check_pair(frames, clean) -> tuple[np.ndarray, np.ndarray]:
    x = _frames2d(frames)
    c = _frames2d(clean, "clean")
    _same_shape(x, c, "frames", "clean")
    return x, c


def percentiles(values, qs: Sequence[float] = (50, 90, 99), *, digits: int | None = None, empty=None) -> dict:
    """``{"n", "p50", "p90", ..., "max"}`` of ``values`` (latencies, say); ``empty`` for each with no values.

    ``qs`` are percent; ``p99.9`` is keyed ``"p999"``. ``digits`` rounds the results.

    Examples
    --------
    >>> percentiles([1.0, 2.0, 3.0, 4.0], (50,))
    {'n': 4, 'p50': 2.5, 'max': 4.0}
    """
    keys = ["p" + f"{q:g}".replace(".", "") for q in qs]
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        return {"n": 0, **{k: empty for k in keys}, "max": empty}
    out = dict(zip(keys, (float(v) for v in np.percentile(a, list(qs)))), max=float(a.max()))
    if digits is not None:
        out = {k: round(v, digits) for k, v in out.items()}
    return {"n": int(a.size), **out}


# --------------------------------------------------------------------------- movies


def psnr_db(estimate, clean) -> float:
    """Peak SNR in dB: ``10 log10(peak² / mean (x − c)²)``, peak = the clean movie's range.

    Examples
    --------
    >>> import numpy as np
    >>> round(psnr_db(np.array([[0.0, 1.5]]), np.array([[0.0, 2.0]])), 2)   # range 2, mse 0.125
    15.05
    """
    x, c = np.asarray(estimate, dtype=np.float64), np.asarray(clean, dtype=np.float64)
    _same_shape(x, c, "estimate", "clean")
    mse = float(np.mean((x - c) ** 2))
    peak = float(c.max() - c.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def neuron_traces(movie, footprints) -> np.ndarray:
    """Each neuron's trace: the footprint-weighted mean of ``movie`` (T, H, W) per frame.

    ``footprints`` (N, H, W), non-negative weights; returns (N, T) float64.
    """
    m = np.asarray(movie, dtype=np.float64)
    f = np.asarray(footprints, dtype=np.float64)
    if m.ndim != 3 or f.ndim != 3 or m.shape[1:] != f.shape[1:]:
        raise ValueError(f"expected a movie (T, H, W) and footprints (N, H, W) of the same frame size, "
                         f"got {m.shape} and {f.shape}")
    w = f.reshape(len(f), -1)
    return (w @ m.reshape(len(m), -1).T) / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)


def neuron_correlation(estimate, clean, footprints) -> np.ndarray:
    """Per neuron, the Pearson correlation of its trace in ``estimate`` with that in ``clean``.

    Returns (N,); NaN for a neuron whose clean trace is constant.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.sin(np.arange(50) / 5.0)
    >>> clean = t[:, None, None] * np.ones((1, 4, 4))
    >>> neuron_correlation(clean + 1.0, clean, np.ones((1, 4, 4))).round(3).tolist()
    [1.0]
    """
    a, b = neuron_traces(estimate, footprints), neuron_traces(clean, footprints)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / den, np.nan)
