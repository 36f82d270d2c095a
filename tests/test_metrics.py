"""Tests for rtdenoise.metrics: metric properties and that each baseline does its job."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtdenoise import metrics, baselines

FS = 5.0
T, W = 600, 64


def _smooth_trace(rng, t, *, scale=0.2, width=8.0):
    """A slow random trace: white noise smoothed over ~width frames."""
    from scipy.ndimage import gaussian_filter1d

    x = gaussian_filter1d(rng.standard_normal(t), width)
    return scale * x / x.std()


def _spectrum(center, width, w=W):
    lam = np.linspace(0, 1, w)
    return np.exp(-0.5 * ((lam - center) / width) ** 2)


@pytest.fixture(scope="module")
def toy():
    """Low-rank multiplicative toy: F0 * exp(trace ⊗ spectrum) + Gaussian noise."""
    rng = np.random.default_rng(42)
    f0 = 100 + 50 * _spectrum(0.4, 0.3)
    spec = _spectrum(0.6, 0.1)
    trace = _smooth_trace(rng, T, width=15.0)
    clean = f0 * np.exp(np.outer(trace, spec))
    noisy = clean + rng.normal(0, 6.0, size=clean.shape)
    return noisy, clean


# --------------------------------------------------------------------------- snr_db


def test_snr_perfect_is_inf_and_falls_with_noise():
    rng = np.random.default_rng(0)
    clean = 10 + np.outer(np.sin(np.arange(200) / 7), np.hanning(W))
    assert metrics.snr_db(clean, clean) == math.inf
    noise = rng.standard_normal(clean.shape)
    scores = [metrics.snr_db(clean + s * noise, clean) for s in (0.01, 0.1, 0.3, 1.0, 3.0)]
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_snr_hand_computed():
    clean = np.array([[1.0, 2.0], [3.0, 4.0]])  # per-bin means (2, 3): signal power 4
    estimate = clean + np.array([[1.0, 0.0], [0.0, 1.0]])  # error power 2
    assert metrics.snr_db(estimate, clean) == pytest.approx(10 * math.log10(2.0))
    # a steady offset in the clean baseline does not change the score
    assert metrics.snr_db(estimate + 1000, clean + 1000) == pytest.approx(10 * math.log10(2.0))
    # 1-D traces work too
    assert metrics.snr_db(np.array([0.0, 3.0]), np.array([0.0, 2.0])) == pytest.approx(
        10 * math.log10(2.0 / 1.0)
    )


@pytest.mark.parametrize(
    "estimate, clean, match",
    [
        pytest.param(np.zeros((4, 3)), np.zeros((4, 2)), "same shape", id="shape"),
        pytest.param(np.full((2, 2), np.nan), np.zeros((2, 2)), "non-finite", id="nan"),
        pytest.param(np.zeros((2, 2)), np.full((2, 2), np.inf), "non-finite", id="inf"),
    ],
)
def test_snr_rejects(estimate, clean, match):
    with pytest.raises(ValueError, match=match):
        metrics.snr_db(estimate, clean)


# --------------------------------------------------------------------------- unmix


def _mixture(t=80, seed=1):
    rng = np.random.default_rng(seed)
    spectra = np.stack([_spectrum(0.3, 0.08), _spectrum(0.7, 0.15) - 0.5 * _spectrum(0.5, 0.3)])
    coef = np.stack([_smooth_trace(rng, t, width=3), _smooth_trace(rng, t, width=5)], axis=1)
    f0 = 200 + 80 * _spectrum(0.5, 0.25)
    return f0 * np.exp(coef @ spectra), spectra, coef, f0


def test_unmix_recovers_coefficients_exactly():
    frames, spectra, coef, f0 = _mixture()
    est = metrics.unmix(frames, spectra, baseline=f0)
    assert est.shape == coef.shape and est.dtype == np.float64
    np.testing.assert_allclose(est, coef, atol=1e-6)


def test_unmix_default_baseline_is_exact_up_to_constant():
    frames, spectra, coef, _ = _mixture()
    diff = metrics.unmix(frames, spectra) - coef
    assert np.ptp(diff, axis=0).max() < 1e-6


def test_unmix_ignores_a_flat_change():
    frames, spectra, coef, f0 = _mixture()
    flicker = np.exp(0.05 * np.sin(np.arange(len(frames))))[:, None]  # wavelength-flat
    np.testing.assert_allclose(metrics.unmix(frames * flicker, spectra, baseline=f0), coef, atol=1e-6)


def test_unmix_float32_policy():
    frames, spectra, coef, f0 = _mixture()
    est = metrics.unmix(frames.astype(np.float32), spectra, baseline=f0)
    assert est.dtype == np.float32
    np.testing.assert_allclose(est, coef, atol=1e-4)


def test_unmix_rejects():
    frames, spectra, _, f0 = _mixture()
    with pytest.raises(ValueError, match="spectra must be"):
        metrics.unmix(frames, spectra[:, :-1])
    with pytest.raises(ValueError, match="linearly dependent"):
        metrics.unmix(frames, np.stack([spectra[0], np.ones(W)]))
    with pytest.raises(ValueError, match="positive"):
        metrics.unmix(frames, spectra, baseline=-f0)
    with pytest.raises(ValueError, match="baseline must have shape"):
        metrics.unmix(frames, spectra, baseline=f0[:10])
    bad = frames.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        metrics.unmix(bad, spectra)


def test_trace_correlation():
    frames, spectra, coef, _ = _mixture()
    assert metrics.trace_correlation(frames, coef[:, 0], spectra) == pytest.approx(1.0, abs=1e-9)
    assert metrics.trace_correlation(frames, -coef[:, 1], spectra, index=1) == pytest.approx(-1.0)
    rng = np.random.default_rng(3)
    noisy = frames + rng.normal(0, 20, frames.shape)
    r_noisy = metrics.trace_correlation(noisy, coef[:, 0], spectra)
    assert r_noisy < metrics.trace_correlation(frames, coef[:, 0], spectra)
    with pytest.raises(ValueError, match="index"):
        metrics.trace_correlation(frames, coef[:, 0], spectra, index=2)
    with pytest.raises(ValueError, match="frames"):
        metrics.trace_correlation(frames, coef[:-1, 0], spectra)
    with pytest.raises(ValueError, match="constant"):
        metrics.trace_correlation(frames, np.ones(len(frames)), spectra)


# --------------------------------------------------------------------------- events


def _transients(t, onsets, heights, *, fs=FS, tau_s=2.0, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(t)
    x = noise * rng.standard_normal(t)
    for onset, h in zip(onsets, heights):
        after = time >= onset
        x[after] += h * np.exp(-(time[after] - onset) / (tau_s * fs))
    return x


def test_detect_events_finds_injected_transients():
    onsets, heights = [100, 250, 400], [1.0, 2.0, 1.5]
    x = _transients(500, onsets, heights)
    assert metrics.detect_events(x, fs=FS).tolist() == onsets


def test_detect_events_few_on_pure_noise():
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(3000)
    raw = metrics.detect_events(noise, fs=FS)
    assert len(raw) <= 1
    # the use in benchmarks: a smoother invents no transients on pure noise
    smoothed = baselines.ema(noise[:, None], alpha=0.3)[:, 0]
    assert len(metrics.detect_events(smoothed, fs=FS)) <= len(raw) + 1
    assert metrics.detect_events(np.zeros(50), fs=FS).size == 0


def test_detect_events_merges_within_separation():
    x = np.zeros(100)
    x[20:] += 1.0
    x[21:] += 1.0  # a rise spread over two frames: one event
    x[24:] += 1.0  # 0.4 s later at 10 Hz: merged with min_separation 1 s
    assert metrics.detect_events(x, fs=10.0, threshold=0.5).tolist() == [20]
    assert metrics.detect_events(x, fs=10.0, threshold=0.5, min_separation_s=0.3).tolist() == [20, 24]


def test_detect_events_explicit_threshold():
    x = _transients(300, [50, 150], [0.5, 3.0])
    assert metrics.detect_events(x, fs=FS, threshold=1.0).tolist() == [150]


def test_event_amplitudes_within_ten_percent():
    onsets, heights = [100, 250, 400], [1.0, 2.0, 1.5]
    x = 3.0 + _transients(500, onsets, heights)
    found = metrics.detect_events(x, fs=FS)
    amps = metrics.event_amplitudes(x, found, fs=FS)
    np.testing.assert_allclose(amps, heights, rtol=0.1)
    assert metrics.event_amplitudes(x, [], fs=FS).shape == (0,)


def test_event_args_rejected():
    x = np.zeros(20)
    with pytest.raises(ValueError, match="fs"):
        metrics.detect_events(x, fs=0)
    with pytest.raises(ValueError, match="1-D"):
        metrics.detect_events(np.zeros((5, 2)), fs=FS)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.detect_events(np.r_[x, np.nan], fs=FS)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        metrics.event_amplitudes(x, [25], fs=FS)
    with pytest.raises(ValueError, match="integer"):
        metrics.event_amplitudes(x, [2.5], fs=FS)


# --------------------------------------------------------------------------- baselines


BEST = {
    "gaussian_2d": lambda n, c: baselines.best_gaussian_2d(n, c),
    "savgol": lambda n, c: baselines.best_savgol(n, c),
    "ema": lambda n, c: baselines.best_ema(n, c),
    "pca": lambda n, c: baselines.best_pca(n, c),
    "pca-causal": lambda n, c: baselines.best_pca(n, c, fit_frames=300),
}


@pytest.mark.parametrize("name", list(BEST))
def test_every_baseline_raises_snr(toy, name):
    noisy, clean = toy
    raw = metrics.snr_db(noisy, clean)
    est, param, score = BEST[name](noisy, clean)
    assert est.shape == noisy.shape
    assert score == pytest.approx(metrics.snr_db(est, clean))
    assert score > raw + 3.0, (name, param, raw, score)


def test_baseline_table(toy):
    noisy, clean = toy
    table = baselines.baseline_table(noisy, clean, fs=FS)
    assert list(table) == [
        "raw",
        "gaussian_2d (offline)",
        "savgol (offline)",
        "ema (causal)",
        "pca (offline)",
        "pca (causal, first 60 s)",
    ]
    assert table["raw"]["param"] is None
    for name, row in table.items():
        if name != "raw":
            assert row["snr_db"] > table["raw"]["snr_db"], name
    # short recording: causal fit capped at T, so it equals the offline PCA
    short = baselines.baseline_table(noisy[:100], clean[:100], fs=FS)
    assert short["pca (causal, first 60 s)"] == short["pca (offline)"]


def test_pca_true_rank_beats_rank_one():
    rng = np.random.default_rng(5)
    t = 400
    basis = np.stack([_spectrum(0.3, 0.1), _spectrum(0.7, 0.1)])  # (2, W)
    traces = np.stack([_smooth_trace(rng, t, scale=5), _smooth_trace(rng, t, scale=5)], 1)
    clean = 50 + traces @ basis
    noisy = clean + rng.normal(0, 1.0, clean.shape)
    s1 = metrics.snr_db(baselines.pca_project(noisy, rank=1), clean)
    s2 = metrics.snr_db(baselines.pca_project(noisy, rank=2), clean)
    assert s2 > s1 + 3.0
    _, best_rank, _ = baselines.best_pca(noisy, clean)
    assert best_rank == 2
    # noiseless data of rank 2 is reproduced by rank 2
    np.testing.assert_allclose(baselines.pca_project(clean, rank=2), clean, atol=1e-9)


def test_ema_is_causal(toy):
    noisy, _ = toy
    out = baselines.ema(noisy, alpha=0.2)
    changed = noisy.copy()
    changed[300:] = np.random.default_rng(9).normal(size=changed[300:].shape)
    out2 = baselines.ema(changed, alpha=0.2)
    np.testing.assert_array_equal(out[:300], out2[:300])
    assert not np.allclose(out[300:], out2[300:])
    np.testing.assert_array_equal(out[0], noisy[0])  # y0 = x0
    np.testing.assert_allclose(baselines.ema(noisy, alpha=1.0), noisy)


def test_causal_pca_ignores_frames_after_fit(toy):
    noisy, _ = toy
    n = 200
    out = baselines.pca_project(noisy, rank=2, fit_frames=n)
    changed = noisy.copy()
    changed[n:] *= 1.5
    out2 = baselines.pca_project(changed, rank=2, fit_frames=n)
    np.testing.assert_allclose(out[:n], out2[:n], rtol=0, atol=1e-9)
    # each later frame depends only on itself (and the frozen fit)
    np.testing.assert_allclose(
        baselines.pca_project(changed, rank=2, fit_frames=n)[n + 5],
        baselines.pca_project(np.r_[noisy[:n], changed[n + 5 : n + 6]], rank=2, fit_frames=n)[n],
        atol=1e-9,
    )


def test_offline_baselines_use_the_future(toy):
    noisy, _ = toy
    changed = noisy.copy()
    changed[300:] += 50.0
    for fn in (
        lambda x: baselines.gaussian_2d(x, sigma=2),
        lambda x: baselines.savgol(x, window=11),
        lambda x: baselines.pca_project(x, rank=2),
    ):
        assert not np.allclose(fn(noisy)[:300], fn(changed)[:300])


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda x: baselines.gaussian_2d(x, sigma=(1, 0.5)), id="gaussian"),
        pytest.param(lambda x: baselines.savgol(x, window=7), id="savgol"),
        pytest.param(lambda x: baselines.ema(x, alpha=0.3), id="ema"),
        pytest.param(lambda x: baselines.pca_project(x, rank=2), id="pca"),
        pytest.param(lambda x: baselines.pca_project(x, rank=2, fit_frames=50), id="pca-causal"),
    ],
)
def test_baseline_dtype_policy(toy, fn):
    noisy, _ = toy
    x32 = noisy[:100].astype(np.float32)
    out32 = fn(x32)
    assert out32.dtype == np.float32 and out32.shape == x32.shape
    assert out32 is not x32
    assert fn(np.round(noisy[:100]).astype(np.int32)).dtype == np.float64
    before = x32.copy()
    fn(x32)
    np.testing.assert_array_equal(x32, before)  # inputs are never modified


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda x: baselines.gaussian_2d(x[:, :, None], sigma=1), r"\(T, W\)", id="3-D"),
        pytest.param(lambda x: baselines.gaussian_2d(x, sigma=-1), "sigma", id="sigma<0"),
        pytest.param(lambda x: baselines.gaussian_2d(x, sigma=(1, 2, 3)), "sigma", id="sigma-3"),
        pytest.param(lambda x: baselines.savgol(x, window=6), "odd", id="even-window"),
        pytest.param(lambda x: baselines.savgol(x[:5], window=7), "odd", id="window>T"),
        pytest.param(lambda x: baselines.ema(x, alpha=0), "alpha", id="alpha=0"),
        pytest.param(lambda x: baselines.ema(x, alpha=1.5), "alpha", id="alpha>1"),
        pytest.param(lambda x: baselines.pca_project(x, rank=W + 1), "rank", id="rank>W"),
        pytest.param(lambda x: baselines.pca_project(x, rank=1, fit_frames=10**6), "fit_frames",
                     id="fit>T"),
        pytest.param(lambda x: baselines.best_ema(x, x[:-1]), "same shape", id="clean-shape"),
        pytest.param(lambda x: baselines.best_savgol(x[:4], x[:4]), "no window", id="grid-too-long"),
        pytest.param(lambda x: baselines.baseline_table(x, x, fs=-1), "fs", id="fs"),
    ],
)
def test_baseline_argument_errors(toy, call, match):
    with pytest.raises(ValueError, match=match):
        call(toy[0])


def test_baselines_reject_nan(toy):
    noisy = toy[0].copy()
    noisy[10, 5] = np.nan
    for fn in (
        lambda x: baselines.gaussian_2d(x, sigma=1),
        lambda x: baselines.savgol(x, window=5),
        lambda x: baselines.ema(x, alpha=0.5),
        lambda x: baselines.pca_project(x, rank=1),
        lambda x: baselines.best_pca(toy[0], x),
    ):
        with pytest.raises(ValueError, match="frame 10"):
            fn(noisy)


def test_docstring_examples_run():
    import doctest

    for module in (metrics, baselines):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_percentiles_keys_rounding_and_empty():
    v = np.arange(1, 101, dtype=float)
    p = metrics.percentiles(v, (50, 99, 99.9))
    assert list(p) == ["n", "p50", "p99", "p999", "max"]
    assert p["n"] == 100 and p["max"] == 100.0 and p["p50"] == pytest.approx(50.5)
    assert metrics.percentiles([1 / 3, 2 / 3], digits=4)["p50"] == 0.5
    assert metrics.percentiles([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}


def test_movie_baselines_beat_raw_and_the_causal_ones_ignore_the_future():
    from rtdenoise.synth import simulate_movie

    m = simulate_movie(60, seed=5, shape=(32, 32), photons=5)
    ref = m["clean"] + m["static"]
    table = baselines.movie_baseline_table(m["noisy"], ref)
    assert all(v["snr_db"] > table["raw"]["snr_db"] for k, v in table.items() if k != "raw")
    changed = m["noisy"].copy()
    changed[40:] += 50.0
    for causal in (lambda x: baselines.gaussian_frames(x, sigma=1.0), lambda x: baselines.ema_movie(x, alpha=0.3)):
        np.testing.assert_array_equal(causal(changed)[:40], causal(m["noisy"])[:40])
    assert not np.allclose(baselines.gaussian_3d(changed, sigma_t=2, sigma_s=1)[:40],
                           baselines.gaussian_3d(m["noisy"], sigma_t=2, sigma_s=1)[:40])  # offline: it looks ahead
    corr = metrics.neuron_correlation(ref, ref, m["footprints"])
    assert np.allclose(corr[np.isfinite(corr)], 1.0) and metrics.psnr_db(ref, ref) == float("inf")


def test_registered_gaussian_ema_follows_motion_causally_and_beats_the_unregistered_one_on_a_moving_movie():
    from rtdenoise.synth import ImagingConfig, simulate_movie

    cfg = ImagingConfig(fs=(30.0, 30.0), motion_px=(1.0, 1.0), motion_cutoff_hz=(0.5, 0.5))
    m = simulate_movie(200, seed=4, shape=(64, 64), photons=10.0, config=cfg)  # 17 neurons: edges to register on
    ref = m["clean"] + m["static"]
    shifts, true = baselines.register_movie(m["noisy"]), np.asarray(m["shifts"], dtype=float)
    late = slice(50, None)  # the reference is the mean of the first frames: compare moves, not offsets
    err = (shifts - shifts[late].mean(0)) - (true - true[late].mean(0))
    assert np.sqrt(np.mean(err[late] ** 2)) < 0.1
    table = baselines.movie_baseline_table(m["noisy"], ref, motion=True)
    assert table["gaussian + ema, registered (causal)"]["snr_db"] > table["gaussian + ema (causal)"]["snr_db"] + 0.5
    changed = m["noisy"].copy()
    changed[120:] += 50.0
    filt = lambda x: baselines.registered(x, baselines.register_movie(x), lambda a: baselines.ema_movie(a, alpha=0.3))  # noqa: E731
    np.testing.assert_allclose(filt(changed)[:120], filt(m["noisy"])[:120], rtol=1e-6, atol=1e-6)  # causal
