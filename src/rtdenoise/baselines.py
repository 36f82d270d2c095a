"""Classical baselines, shared by tests and benchmarks: what a denoiser must beat.

Frames are ``(T, W)`` arrays, time first; the dtype policy is :mod:`rtdenoise.metrics`'.

Baselines, and whether a real-time system could run them:

===================  =======  ===============================================
baseline             causal   parameter
===================  =======  ===============================================
:func:`gaussian_2d`  no       ``sigma`` (frames, bins)
:func:`savgol`       no       ``window`` (frames)
:func:`ema`          yes      ``alpha``
:func:`pca_project`  either   ``rank``; causal with ``fit_frames``
===================  =======  ===============================================

The ``best_*`` functions pick each baseline's parameter by its SNR against the clean
ground truth, which no real recording has: an optimistic yardstick, on purpose (the one
DeepDenoise compares against). A denoiser should beat them without that help.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from rtdenoise.metrics import _check_pair, _frames2d, _out_dtype, _positive, snr_db

__all__ = [
    "baseline_table",
    "best_ema",
    "best_gaussian_2d",
    "best_pca",
    "best_savgol",
    "ema",
    "gaussian_2d",
    "pca_project",
    "savgol",
]


# --------------------------------------------------------------------------- baselines


def gaussian_2d(frames, *, sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian smoothing over time and wavelength. Offline: uses future frames.

    Parameters
    ----------
    frames : array_like, shape (T, W)
    sigma : float or (float, float)
        Standard deviation in frames and bins, one for both or ``(sigma_t, sigma_w)``;
        0 leaves an axis alone.

    Returns
    -------
    numpy.ndarray, shape (T, W)

    Examples
    --------
    >>> import numpy as np
    >>> gaussian_2d(np.ones((20, 152)), sigma=(2, 1)).shape
    (20, 152)
    """
    x = _frames2d(frames)
    sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    if sig.shape not in ((1,), (2,)) or not np.isfinite(sig).all() or (sig < 0).any():
        raise ValueError(f"sigma must be >= 0: one number or (sigma_t, sigma_w), got {sigma!r}")
    from scipy.ndimage import gaussian_filter

    sig2 = (float(sig[0]), float(sig[-1]))
    return gaussian_filter(x.astype(np.float64), sigma=sig2, mode="reflect").astype(_out_dtype(x))


def savgol(frames, *, window: int, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing along time, per bin. Offline: centred window.

    Parameters
    ----------
    frames : array_like, shape (T, W)
    window : int
        Odd window length in frames, ``order < window <= T``.
    order : int, default 2
        Polynomial order.

    Returns
    -------
    numpy.ndarray, shape (T, W)

    Examples
    --------
    >>> import numpy as np
    >>> savgol(np.ones((20, 152)), window=7).shape
    (20, 152)
    """
    x = _frames2d(frames)
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be an integer >= 0, got {order!r}")
    if (
        not isinstance(window, (int, np.integer))
        or window % 2 == 0
        or window <= order
        or window > x.shape[0]
    ):
        raise ValueError(
            f"window must be an odd integer with order ({order}) < window <= T "
            f"({x.shape[0]} frames), got {window!r}"
        )
    from scipy.signal import savgol_filter

    out = savgol_filter(x.astype(np.float64), int(window), int(order), axis=0, mode="interp")
    return out.astype(_out_dtype(x))


def ema(frames, *, alpha: float) -> np.ndarray:
    """Exponential moving average along time. Causal: output t uses frames <= t only.

    ``y[0] = x[0]``, ``y[t] = alpha · x[t] + (1 - alpha) · y[t-1]``.

    Parameters
    ----------
    frames : array_like, shape (T, W)
    alpha : float
        Weight of the new frame, ``0 < alpha <= 1`` (1 returns the input).

    Returns
    -------
    numpy.ndarray, shape (T, W)

    Examples
    --------
    >>> import numpy as np
    >>> ema(np.array([[0.0], [1.0], [1.0]]), alpha=0.5).ravel().tolist()
    [0.0, 0.5, 0.75]
    """
    x = _frames2d(frames)
    a = _positive(alpha, "alpha")
    if a > 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    from scipy.signal import lfilter

    xf = x.astype(np.float64)
    x0 = xf[:1]  # (1, W); filtering x - x0 from rest makes y[0] = x[0] exactly
    out = lfilter([a], [1.0, -(1.0 - a)], xf - x0, axis=0) + x0
    return out.astype(_out_dtype(x))


def _pca_fit(fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)  # (min(N, W), W)
    return mean, vt


def _check_fit_frames(fit_frames, t: int) -> int:
    if fit_frames is None:
        return t
    if not isinstance(fit_frames, (int, np.integer)) or not 1 <= fit_frames <= t:
        raise ValueError(
            f"fit_frames must be None (offline) or an integer in [1, T={t}], got "
            f"{fit_frames!r}"
        )
    return int(fit_frames)


def pca_project(frames, *, rank: int, fit_frames: int | None = None) -> np.ndarray:
    """Projection onto the first principal spectral components.

    Subtracts the per-bin mean, keeps the `rank` leading right singular vectors
    (spectral shapes) and adds the mean back.

    Parameters
    ----------
    frames : array_like, shape (T, W)
    rank : int
        Components kept, ``0 <= rank <= min(N, W)`` for ``N`` fitting frames (0 keeps
        only the mean spectrum).
    fit_frames : int, optional
        None: offline, mean and subspace from the whole recording. ``N``: the causal,
        practical variant: mean and subspace from ``frames[:N]`` (e.g. the stream's
        first minute), then frozen and applied to every frame. Frames before ``N`` are
        then projected with a subspace that saw the rest of that first minute, as this
        classical baseline is used in practice.

    Returns
    -------
    numpy.ndarray, shape (T, W)

    Examples
    --------
    >>> import numpy as np
    >>> x = np.outer(np.sin(np.arange(30)), np.ones(8)) + 5
    >>> np.allclose(pca_project(x, rank=1), x)
    True
    """
    x = _frames2d(frames)
    n = _check_fit_frames(fit_frames, x.shape[0])
    limit = min(n, x.shape[1])
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank <= limit:
        raise ValueError(
            f"rank must be an integer in [0, {limit}] (fit frames {n}, bins "
            f"{x.shape[1]}), got {rank!r}"
        )
    xf = x.astype(np.float64)
    mean, vt = _pca_fit(xf[:n])
    v = vt[:rank]  # (rank, W)
    return (mean + ((xf - mean) @ v.T) @ v).astype(_out_dtype(x))


def _best(
    frames, clean, params: Iterable, run: Callable[[object], np.ndarray], what: str
) -> tuple[np.ndarray, object, float]:
    best = None
    for p in params:
        est = run(p)
        score = snr_db(est, clean)
        if best is None or score > best[2]:
            best = (est, p, score)
    if best is None:
        raise ValueError(f"no {what} in the grid fits these {np.shape(frames)[0]} frames")
    return best


def best_gaussian_2d(
    frames, clean, *, sigmas: Sequence = (0.5, 1, 1.5, 2, 3, 4)
) -> tuple[np.ndarray, object, float]:
    """:func:`gaussian_2d` with the sigma that maximises :func:`snr_db` against `clean`.

    Offline, and an oracle: it uses the ground truth to choose.

    Returns
    -------
    (numpy.ndarray, sigma, float)
        The best estimate, its sigma and its SNR in dB.
    """
    x, c = _check_pair(frames, clean)
    return _best(x, c, sigmas, lambda s: gaussian_2d(x, sigma=s), "sigma")


def best_savgol(
    frames, clean, *, windows: Sequence[int] = (5, 7, 11, 15, 21, 31), order: int = 2
) -> tuple[np.ndarray, int, float]:
    """:func:`savgol` with the window that maximises :func:`snr_db` against `clean`.

    Offline oracle. Windows longer than the recording are skipped.

    Returns
    -------
    (numpy.ndarray, int, float)
        The best estimate, its window and its SNR in dB.
    """
    x, c = _check_pair(frames, clean)
    fits = [w for w in windows if w <= x.shape[0]]
    return _best(x, c, fits, lambda w: savgol(x, window=w, order=order), "window")


def best_ema(
    frames, clean, *, alphas: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
) -> tuple[np.ndarray, float, float]:
    """:func:`ema` with the alpha that maximises :func:`snr_db` against `clean`.

    The filter is causal; the choice of alpha is an oracle.

    Returns
    -------
    (numpy.ndarray, float, float)
        The best estimate, its alpha and its SNR in dB.
    """
    x, c = _check_pair(frames, clean)
    return _best(x, c, alphas, lambda a: ema(x, alpha=a), "alpha")


def best_pca(
    frames,
    clean,
    *,
    ranks: Sequence[int] = (1, 2, 3, 4, 5, 6, 8),
    fit_frames: int | None = None,
) -> tuple[np.ndarray, int, float]:
    """:func:`pca_project` with the rank that maximises :func:`snr_db` against `clean`.

    Offline, or causal with `fit_frames` (see :func:`pca_project`); the choice of rank
    is an oracle. Ranks above ``min(fit frames, W)`` are skipped.

    Returns
    -------
    (numpy.ndarray, int, float)
        The best estimate, its rank and its SNR in dB.
    """
    x, c = _check_pair(frames, clean)
    n = _check_fit_frames(fit_frames, x.shape[0])
    for r in ranks:
        if not isinstance(r, (int, np.integer)) or r < 0:
            raise ValueError(f"ranks must be integers >= 0, got {r!r}")
    xf = x.astype(np.float64)
    mean, vt = _pca_fit(xf[:n])  # one SVD for the whole grid
    centred = xf - mean
    out = _out_dtype(x)

    def run(r: int) -> np.ndarray:
        v = vt[:r]
        return (mean + (centred @ v.T) @ v).astype(out)

    fits = [r for r in ranks if r <= min(n, x.shape[1])]
    return _best(x, c, fits, run, "rank")


def baseline_table(noisy, clean, *, fs: float) -> dict[str, dict]:
    """SNR of the raw recording and of every classical baseline, each at its best.

    Parameters
    ----------
    noisy, clean : array_like, shape (T, W)
    fs : float
        Frame rate in Hz; the causal PCA fits on the first 60 s (capped at T frames).

    Returns
    -------
    dict
        ``{name: {"snr_db": float, "param": value}}`` for ``"raw"`` (param None),
        ``"gaussian_2d (offline)"`` (sigma), ``"savgol (offline)"`` (window),
        ``"ema (causal)"`` (alpha), ``"pca (offline)"`` and
        ``"pca (causal, first 60 s)"`` (rank), in that order.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = 100 + np.outer(np.sin(np.arange(200) / 10), np.hanning(32))
    >>> table = baseline_table(clean + rng.normal(size=clean.shape), clean, fs=5.0)
    >>> table["pca (offline)"]["snr_db"] > table["raw"]["snr_db"]
    True
    """
    x, c = _check_pair(noisy, clean)
    fs = _positive(fs, "fs")
    fit = max(1, min(int(60 * fs), x.shape[0]))
    table: dict[str, dict] = {"raw": {"snr_db": snr_db(x, c), "param": None}}
    for name, fn, kwargs in (
        ("gaussian_2d (offline)", best_gaussian_2d, {}),
        ("savgol (offline)", best_savgol, {}),
        ("ema (causal)", best_ema, {}),
        ("pca (offline)", best_pca, {}),
        ("pca (causal, first 60 s)", best_pca, {"fit_frames": fit}),
    ):
        _, param, score = fn(x, c, **kwargs)
        table[name] = {"snr_db": score, "param": param}
    return table


# --------------------------------------------------------------------------- movies


def gaussian_frames(movie, *, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each frame of a movie (T, H, W) in space only. Causal."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(movie, dtype=np.float64), sigma=(0.0, sigma, sigma), mode="reflect")


def gaussian_3d(movie, *, sigma_t: float, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing in time and space. Offline: uses future frames."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(movie, dtype=np.float64), sigma=(sigma_t, sigma_s, sigma_s), mode="reflect")


def ema_movie(movie, *, alpha: float) -> np.ndarray:
    """:func:`ema` along time at every pixel of a movie (T, H, W). Causal."""
    m = np.asarray(movie, dtype=np.float64)
    return ema(m.reshape(len(m), -1), alpha=alpha).reshape(m.shape)


def register_movie(movie, *, horizon: int = 300, floor: float = 1.0) -> np.ndarray:
    """Each frame's rigid shift (T, 2), ``(dy, dx)`` px, against a running mean of the frames
    before it, as the imaging front end finds it (:func:`rtdenoise.model.frontend.follow_motion`).
    Causal. Past 8 px of drift the reference starts again from the current view."""
    from rtdenoise.model.frontend import FrontEnd

    m = np.asarray(movie, dtype=np.float64)
    fe = FrontEnd(m.shape[1:], horizon=horizon, floor=floor, register=True)
    shifts = np.empty((len(m), 2))
    for t in range(len(m)):
        fe.normalize(m[None, t : t + 1])
        shifts[t] = fe.shift[0]
    return shifts


def registered(movie, shifts, filt: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``filt`` applied to ``movie`` (T, H, W) moved back by ``shifts`` (T, 2) onto one
    reference, its output moved forward again: a filter on a motion-corrected movie."""
    from rtdenoise.model.frontend import _fourier_shifts

    m = np.asarray(movie, dtype=np.float64)
    out = filt(_fourier_shifts(m, -np.asarray(shifts)).astype(np.float64))
    return _fourier_shifts(out, np.asarray(shifts)).astype(np.float64)


def movie_baseline_table(noisy, clean, *, motion: bool = False) -> dict[str, dict]:
    """SNR (dynamic part, dB) of a raw movie (T, H, W) and of each classical baseline at its best.

    Keys ``"raw"``, ``"gaussian 2-D per frame (causal)"`` (sigma, px),
    ``"ema (causal)"`` (alpha), ``"gaussian + ema (causal)"`` ((sigma, alpha)),
    ``"gaussian 3-D (offline)"`` ((sigma_t, sigma_s)); each ``{"snr_db", "param", "estimate"}``.
    With ``motion``, also ``"gaussian + ema, registered (causal)"``: that filter on the movie
    motion-corrected causally (:func:`register_movie`), the classical answer to a moving field
    of view. Parameters are picked against the clean movie: an optimistic yardstick, on purpose.
    """
    x, c = np.asarray(noisy, dtype=np.float64), np.asarray(clean, dtype=np.float64)
    if x.ndim != 3 or x.shape != c.shape:
        raise ValueError(f"expected two movies (T, H, W) of one shape, got {x.shape} and {c.shape}")
    sigmas, alphas = (0.5, 0.75, 1.0, 1.5, 2.0), (0.1, 0.2, 0.3, 0.5, 0.7)

    def best(params, run, what):
        est, p, score = _best(x, c, params, run, what)
        return {"snr_db": score, "param": p, "estimate": est}

    table = {"raw": {"snr_db": snr_db(x, c), "param": None, "estimate": x}}
    table["gaussian 2-D per frame (causal)"] = best(sigmas, lambda s: gaussian_frames(x, sigma=s), "sigma")
    table["ema (causal)"] = best(alphas, lambda a: ema_movie(x, alpha=a), "alpha")
    table["gaussian + ema (causal)"] = best([(s, a) for s in sigmas[:4] for a in alphas],
                                            lambda p: ema_movie(gaussian_frames(x, sigma=p[0]), alpha=p[1]), "(sigma, alpha)")
    table["gaussian 3-D (offline)"] = best([(t, s) for t in (0.5, 1.0, 2.0, 3.0) for s in sigmas[:4]],
                                           lambda p: gaussian_3d(x, sigma_t=p[0], sigma_s=p[1]), "(sigma_t, sigma_s)")
    if motion:
        shifts = register_movie(x)
        table["gaussian + ema, registered (causal)"] = best(
            [(s, a) for s in sigmas[:4] for a in alphas],
            lambda p: registered(x, shifts, lambda m: ema_movie(gaussian_frames(m, sigma=p[0]), alpha=p[1])),
            "(sigma, alpha)")
    return table
