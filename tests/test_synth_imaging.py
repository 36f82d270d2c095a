"""The imaging scene model and the per-pixel noise models (sCMOS, PMT, recorded): properties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdenoise.synth import (
    ImagingConfig,
    PMTConfig,
    PMTNoise,
    RecordedMovieNoise,
    SCMOSConfig,
    SCMOSNoise,
    pure_noise_movie,
    sample_scene,
    simulate_movie,
)
from rtdenoise.synth.imaging import calcium_dff

# Nothing slow or global changes: the movie is neurons on a flat haze.
QUIET = dict(neuropil_contrast=(0.0, 0.0), neuropil_std=(0.0, 0.0), drift_std=(0.0, 0.0),
             bleach_rate=(0.0, 0.0), motion_px=(0.0, 0.0))


def _scene(seed=0, n=40, shape=(48, 48), **changes):
    return sample_scene(ImagingConfig(**changes), n, np.random.default_rng(seed), shape=shape)


# ----------------------------------------------------------------------------- scene


@pytest.mark.parametrize("shape", [pytest.param((64, 64), id="square"), pytest.param((40, 72), id="wide")])
def test_simulate_movie_shapes_and_dtypes(shape):
    m = simulate_movie(16, seed=0, shape=shape)
    t, (h, w) = 16, shape
    n = m["footprints"].shape[0]
    assert m["noisy"].shape == m["clean"].shape == (t, h, w)
    assert m["noisy"].dtype == m["clean"].dtype == m["static"].dtype == np.float32
    assert m["static"].shape == m["background"].shape == (h, w)
    assert m["footprints"].shape == (n, h, w) and m["footprints"].dtype == np.float32
    assert m["traces"].shape == m["dff"].shape == m["spikes"].shape == (n, t)
    assert m["spikes"].dtype == np.int32 and m["shifts"].shape == (t, 2)
    assert np.isfinite(m["noisy"]).all() and m["clean"].min() >= 0
    assert 10.0 <= m["fs"] <= 90.0 and 0.5 <= m["photons"] <= 20.0


def test_seeds_reproduce_and_differ():
    a, b, c = (simulate_movie(12, seed=s, shape=(32, 32)) for s in (5, 5, 6))
    for key in ("noisy", "clean", "footprints", "spikes"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["noisy"], c["noisy"])


def test_movie_is_background_plus_footprints_times_traces():
    inst = _scene(seed=1, motion_px=(0.0, 0.0), density=(20.0, 20.0))
    model = inst.background[None] * inst.background_trace[:, None, None]
    model = model + np.einsum("nhw,nt->thw", inst.footprints, inst.traces)
    np.testing.assert_allclose(inst.clean, model, rtol=1e-5, atol=1e-5)
    assert inst.n_neurons > 0 and np.all(inst.shifts == 0)


def test_footprints_lie_where_the_clean_movie_is_bright():
    inst = _scene(seed=2, photons=(10.0, 10.0), rate_hz=(0.0, 0.0), density=(20.0, 20.0), shape=(64, 64), **QUIET)
    fp = inst.footprints
    above = inst.clean.mean(0) - inst.background  # the somata's own light
    assert np.all(np.abs(above[fp.sum(0) == 0]) < 1e-5)
    on = fp.max(0) > 0.5
    assert np.all(above[on] > 0.5 * 10.0 * 0.2 * 0.5 - 1e-4)  # photons · min brightness · weight
    peaks = fp.reshape(len(fp), -1).max(1)
    assert np.all(peaks <= 1.0 + 1e-6)  # below 1 only for somata cut by the frame's edge
    inner = np.all((inst.centers > 12) & (inst.centers < 52), axis=1)
    assert inner.any()
    np.testing.assert_allclose(peaks[inner], 1.0, rtol=1e-6)
    # At rest, the brightest soma reads `photons` at its footprint peak.
    assert inst.traces.max() == pytest.approx(10.0, rel=1e-6)


def test_somata_are_ring_like_with_darker_nuclei():
    inst = _scene(seed=3, nucleus_brightness=(0.2, 0.2), processes=(0.0, 0.0), ellipticity=(1.0, 1.0),
                  soma_radius_px=(7.0, 7.0), shape=(64, 64), density=(20.0, 20.0), **QUIET)
    fp, centers = inst.footprints, np.rint(inst.centers).astype(int)
    inner = [i for i, (y, x) in enumerate(centers) if 8 <= y < 56 and 8 <= x < 56]
    assert len(inner) >= 3
    for i in inner:
        y, x = centers[i]
        assert fp[i, y, x] < 0.5 * fp[i].max()  # the nucleus is dark, the ring around it bright


def test_isolated_spikes_decay_with_the_configured_time_constant():
    fs, decay = 50.0, 0.3
    inst = _scene(seed=4, n=600, shape=(48, 48), fs=(fs, fs), rise_s=(0.01, 0.01), decay_s=(decay, decay),
                  rate_hz=(0.3, 0.3), burst_fraction=(0.0, 0.0), amplitude_cv=(0.0, 0.0), saturation=(0.0, 0.0),
                  density=(30.0, 30.0), **QUIET)
    dff, spikes = inst.dff.astype(float), inst.spikes
    assert np.all(dff[spikes.sum(1) == 0] == 0)  # no spikes, no transient
    fits = []
    for n in range(len(spikes)):
        for s in np.nonzero(spikes[n])[0]:
            if s > 0 and s + 45 < spikes.shape[1] and not spikes[n, s + 1 : s + 45].any():
                assert dff[n, s + 1] > dff[n, s - 1]  # rises right after the spike
                k = np.arange(5, 40)  # past the rise (5 frames = 10 rise time constants)
                fits.append(-1.0 / np.polyfit(k, np.log(dff[n, s + k]), 1)[0] / fs)
    assert len(fits) >= 3
    np.testing.assert_allclose(fits, decay, rtol=0.03)


def test_calcium_kernel_peaks_at_the_spike_amplitude_and_saturates():
    spikes = np.zeros((2, 400), dtype=np.int32)
    spikes[:, 10] = 1
    x = calcium_dff(spikes, fs=200.0, rise_s=0.03, decay_s=0.5, amplitude=np.array([0.4, 0.4]))
    assert np.all(x[:, :10] == 0)
    assert x[0].max() == pytest.approx(0.4, rel=0.01)
    tp = np.log(0.5 / 0.03) * 0.5 * 0.03 / (0.5 - 0.03)  # analytic peak time of the kernel
    assert abs((np.argmax(x[0]) - 10) / 200.0 - tp) < 0.01
    sat = calcium_dff(spikes * 20, fs=200.0, rise_s=0.03, decay_s=0.5, amplitude=np.array([0.4, 0.4]), saturation=0.5)
    assert sat.max() < 2.0 < x.max() * 20  # 20 spikes would give 8 linearly; saturation caps at 1/0.5
    instant = calcium_dff(spikes, fs=200.0, rise_s=0.0, decay_s=0.5, amplitude=np.array([0.4, 0.4]))
    assert instant[0, 10] == pytest.approx(0.4 * np.exp(-1.0 / 100.0))  # sampled at the end of the spike's frame


def test_zero_neuron_scene_is_flat_up_to_background():
    inst = _scene(seed=5, density=(0.0, 0.0), photons=(8.0, 8.0), neuropil_level=(0.3, 0.3), **QUIET)
    assert inst.footprints.shape == (0, 48, 48) and inst.traces.shape == (0, 40)
    np.testing.assert_allclose(inst.clean, 8.0 * 0.3, rtol=1e-6)
    hazy = _scene(seed=5, density=(0.0, 0.0), neuropil_contrast=(0.4, 0.4), motion_px=(0.0, 0.0))
    np.testing.assert_allclose(hazy.clean, hazy.background[None] * hazy.background_trace[:, None, None], rtol=1e-5)


def test_pure_noise_movie_is_steady_uniform_light():
    m = pure_noise_movie(200, seed=0, shape=(24, 24), photons=6.0, noise=PMTNoise(PMTConfig(excess_noise=(1.3, 1.3))))
    assert np.all(m["clean"] == 6.0) and m["footprints"].shape == (0, 24, 24)
    resid = m["noisy"] - m["static"]
    assert resid.mean() == pytest.approx(6.0, rel=0.02)
    assert abs(np.corrcoef(resid.mean(0).ravel(), np.arange(24 * 24))[0, 1]) < 0.2  # no structure


def test_no_motion_when_its_amplitude_is_zero_and_rigid_shifts_when_not():
    still = _scene(seed=6, motion_px=(0.0, 0.0))
    assert np.all(still.shifts == 0) and still.params["margin_px"] == 0
    quiet = {**QUIET, "motion_px": (0.6, 0.6)}
    inst = _scene(seed=6, n=60, shape=(64, 64), rate_hz=(0.0, 0.0), density=(25.0, 25.0), fs=(30.0, 30.0), **quiet)
    s, c = inst.shifts.astype(float), inst.clean.astype(float)
    assert s.std() > 0.1
    # Small rigid shifts: frame_t ≈ ref − ∇ref · (s_t − s_ref); recover the shift by least squares.
    r = int(np.argmin(np.abs(s).sum(1)))
    gy, gx = np.gradient(c[r])
    inner = (slice(4, -4), slice(4, -4))
    a = np.stack([-gy[inner].ravel(), -gx[inner].ravel()], 1)
    for t in range(len(s)):
        true = s[t] - s[r]
        if np.abs(true).max() < 1.0:
            est = np.linalg.lstsq(a, (c[t] - c[r])[inner].ravel(), rcond=None)[0]
            assert np.all(np.abs(est - true) < 0.1 + 0.15 * np.abs(true)), (t, true, est)


def test_domain_randomization_draws_vary_and_fixed_ranges_do_not():
    fss = [_scene(seed=i, n=4, shape=(16, 16)).fs for i in range(12)]
    assert min(fss) >= 10 and max(fss) <= 90 and np.std(np.log(fss)) > 0.3
    assert {_scene(seed=i, n=4, shape=(16, 16), fs=(20.0, 20.0)).fs for i in range(4)} == {20.0}
    assert _scene(seed=0, n=4, photons=(1.0, 1.0)).params["photons"] == 1.0
    inst = sample_scene(ImagingConfig(), 4, np.random.default_rng(0), shape=(16, 16), photons=300.0)
    assert inst.params["photons"] == 300.0


@pytest.mark.parametrize(
    "changes, match",
    [
        pytest.param(dict(shape=(2, 64)), "shape", id="shape"),
        pytest.param(dict(fs=(0.0, 30.0)), "fs", id="fs"),
        pytest.param(dict(photons=(5.0, 1.0)), "photons", id="range-order"),
        pytest.param(dict(decay_s=(-1.0, 1.0)), "decay_s", id="negative"),
        pytest.param(dict(ellipticity=(0.5, 1.0)), "ellipticity", id="ellipticity"),
        pytest.param(dict(nucleus_fraction=(0.5, 1.0)), "nucleus_fraction", id="nucleus"),
        pytest.param(dict(rate_hz=(0.0, 1.0)), "log-uniformly", id="log-from-zero"),
        pytest.param(dict(burst_size=(0.0, 2.0)), "burst_size", id="burst"),
    ],
)
def test_bad_imaging_configs_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        ImagingConfig(**changes).validate()


@pytest.mark.parametrize(
    "make, match",
    [
        pytest.param(lambda: PMTConfig(excess_noise=(0.9, 1.2)), "excess_noise", id="pmt-enf"),
        pytest.param(lambda: PMTConfig(gain=(0.0, 1.0)), "gain", id="pmt-gain"),
        pytest.param(lambda: SCMOSConfig(hot_fraction=(0.0, 2.0)), "hot_fraction", id="scmos-hot"),
        pytest.param(lambda: SCMOSConfig(offset=(10.0, 5.0)), "offset", id="scmos-order"),
    ],
)
def test_bad_noise_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make().validate()


def test_configs_roundtrip_through_json_and_reject_unknown_keys():
    for cls in (ImagingConfig, PMTConfig, SCMOSConfig):
        cfg = cls()
        assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        with pytest.raises(ValueError, match=f"unknown {cls.__name__} fields.*bogus"):
            cls.from_dict({"bogus": [0, 0]})
    assert ImagingConfig.from_dict(ImagingConfig(shape=(40, 72)).to_dict()).shape == (40, 72)


# ----------------------------------------------------------------------------- detector noise

SCMOS_SHOT_ONLY = dict(gain=(2.0, 2.0), gain_spread=(0.0, 0.0), offset=(100.0, 100.0), offset_spread=(0.0, 0.0),
                       column_offset=(0.0, 0.0), read_noise=(0.0, 0.0), hot_fraction=(0.0, 0.0))


@pytest.mark.parametrize("level", [20.0, 500.0])  # the exact Poisson and the Gaussian branch
def test_scmos_shot_noise_variance_grows_linearly_with_intensity(level):
    noise = SCMOSNoise(SCMOSConfig(**SCMOS_SHOT_ONLY))
    clean = np.full((400, 16, 16), level, dtype=np.float32)
    noisy, static = noise.sample(clean, np.random.default_rng(0), fs=30.0)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert np.all(static == 100.0)
    resid = noisy - clean - static
    assert resid.mean() == pytest.approx(0.0, abs=0.02 * np.sqrt(level))
    assert resid.var() == pytest.approx(2.0 * level, rel=0.04)


def test_scmos_read_noise_std_offset_pattern_and_hot_pixels():
    rng = np.random.default_rng(1)
    cfg = SCMOSConfig(gain=(1.5, 1.5), read_noise=(2.0, 2.0), read_spread=(0.0, 0.0), hot_fraction=(0.0, 0.0),
                      offset_spread=(3.0, 3.0))
    noisy, static = SCMOSNoise(cfg).sample(np.zeros((500, 32, 32)), rng, fs=30.0)
    assert static.std() > 2.0  # a fixed pattern, kept by a perfect denoiser
    np.testing.assert_allclose(noisy.mean(0), static, atol=0.5)
    assert (noisy - static).std() == pytest.approx(3.0, rel=0.03)  # gain · read noise in electrons
    hot = SCMOSNoise(cfg.__class__(**{**cfg.to_dict(), "hot_fraction": (0.05, 0.05), "hot_factor": (5.0, 5.0)}))
    noisy, _ = hot.sample(np.zeros((300, 64, 64)), rng, fs=30.0)
    sd = noisy.std(0)
    tail = sd > 3.0 * np.median(sd)
    assert tail.mean() == pytest.approx(0.05, abs=0.015)
    assert np.median(sd[tail]) == pytest.approx(5.0 * 3.0, rel=0.1)


@pytest.mark.parametrize("enf", [1.2, 1.6])
def test_pmt_variance_is_excess_noise_times_shot_noise(enf):
    cfg = PMTConfig(gain=(2.0, 2.0), excess_noise=(enf, enf), electronic_noise=(0.0, 0.0), offset=(3.0, 3.0),
                    dark_rate=(0.0, 0.0))
    rng = np.random.default_rng(2)
    for level in (1.0, 10.0, 60.0):  # counts: 0.5, 5, 30 photons at gain 2
        clean = np.full((300, 16, 16), level, dtype=np.float32)
        noisy, static = PMTNoise(cfg).sample(clean, rng, fs=30.0)
        assert np.all(static == 3.0)
        resid = noisy - clean - static
        assert resid.mean() == pytest.approx(0.0, abs=0.02 * level + 0.01)
        assert resid.var() == pytest.approx(enf * 2.0 * level, rel=0.05)


def test_pmt_without_excess_noise_counts_whole_photons_and_keeps_dark_counts_static():
    cfg = PMTConfig(gain=(2.0, 2.0), excess_noise=(1.0, 1.0), electronic_noise=(0.0, 0.0), offset=(3.0, 3.0),
                    dark_rate=(0.5, 0.5))
    noisy, static = PMTNoise(cfg).sample(np.zeros((400, 16, 16)), np.random.default_rng(3), fs=30.0)
    photons = (noisy - 3.0) / 2.0
    np.testing.assert_array_equal(photons, np.rint(photons))
    assert np.all(static == 3.0 + 2.0 * 0.5)
    assert noisy.mean() == pytest.approx(4.0, rel=0.02)


def test_default_movie_noise_is_pmt_and_unbiased():
    m = simulate_movie(200, seed=7, shape=(32, 32), photons=5.0)
    assert np.ptp(m["static"]) == 0  # a PMT's offset is uniform
    diff = (m["noisy"] - m["clean"] - m["static"]).mean()
    assert diff == pytest.approx(0.0, abs=0.02)
    assert PMTNoise().describe()["kind"] == "pmt" and SCMOSNoise().describe()["kind"] == "scmos"


# ----------------------------------------------------------------------------- recorded noise


def _recordings(t=300, shape=(12, 16), level=100.0, seed=0):
    rng = np.random.default_rng(seed)
    dark = 10.0 + 2.0 * rng.standard_normal((t, *shape))
    light = 10.0 + level + np.sqrt(level) * rng.standard_normal((t, *shape))
    return dark, light


def test_recorded_movie_noise_is_rescaled_by_sqrt_signal_over_light_level():
    dark, light = _recordings(t=600)
    rn = RecordedMovieNoise(dark, light)
    rng = np.random.default_rng(0)
    for signal in (25.0, 400.0):
        clean = np.full((400, 12, 16), signal, dtype=np.float32)
        noisy, static = rn.sample(clean, rng, fs=30.0)
        np.testing.assert_allclose(static, dark.mean(0), rtol=1e-5)
        resid = noisy - clean - static
        # shot part: light fluctuation (var 100) × signal / 100; dark part: var 4.
        assert resid.var() == pytest.approx(100.0 * signal / 100.0 + 4.0, rel=0.08)
    only_light = RecordedMovieNoise(light=light - 10.0, light_level=100.0)
    noisy, static = only_light.sample(np.full((400, 12, 16), 50.0), rng, fs=30.0)
    assert np.all(static == 0) and (noisy - 50.0).var() == pytest.approx(50.0, rel=0.08)
    only_dark = RecordedMovieNoise(dark=dark)  # shot noise is then exact Poisson
    noisy, static = only_dark.sample(np.full((400, 12, 16), 30.0), rng, fs=30.0)
    assert (noisy - static).var() == pytest.approx(30.0 + 4.0, rel=0.08)


def test_recorded_movie_noise_crops_a_window_of_the_recording():
    dark, _ = _recordings(t=80, shape=(20, 24))
    noisy, static = RecordedMovieNoise(dark=dark).sample(np.zeros((50, 8, 8)), np.random.default_rng(3), fs=30.0)
    hits = [(i, y, x) for i in range(31) for y in range(13) for x in range(17)
            if np.allclose(noisy, dark[i : i + 50, y : y + 8, x : x + 8], atol=1e-5)]
    assert len(hits) == 1
    _, y, x = hits[0]
    np.testing.assert_allclose(static, dark.mean(0)[y : y + 8, x : x + 8], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, clean_shape, match",
    [
        pytest.param({}, (50, 16, 16), "smaller than the clean frame", id="too-small"),
        pytest.param({}, (400, 8, 8), "fewer than one window", id="too-short"),
        pytest.param({}, (50, 64), r"\(frames, height, width\)", id="clean-2d"),
    ],
)
def test_recorded_movie_noise_refuses_what_it_cannot_cover(kwargs, clean_shape, match):
    dark, light = _recordings(t=300, shape=(12, 16))
    with pytest.raises(ValueError, match=match):
        RecordedMovieNoise(dark, light, **kwargs).sample(np.zeros(clean_shape), np.random.default_rng(0), fs=30.0)


def _nan_dark():
    dark, _ = _recordings(t=20)
    dark[7, 3, 3] = np.nan
    return dark


@pytest.mark.parametrize(
    "make, match",
    [
        pytest.param(lambda: RecordedMovieNoise(), "neither", id="none"),
        pytest.param(lambda: RecordedMovieNoise(dark=_nan_dark()), "NaN.*frame 7", id="nan"),
        pytest.param(lambda: RecordedMovieNoise(dark=np.zeros((20, 12))), r"\(frames, height, width\)", id="2d"),
        pytest.param(lambda: RecordedMovieNoise(dark=np.zeros((1, 4, 4))), "at least 2 frames", id="short"),
        pytest.param(lambda: RecordedMovieNoise(np.zeros((20, 4, 4)), np.ones((20, 4, 5))), "same sensor", id="sizes"),
        pytest.param(lambda: RecordedMovieNoise(np.ones((20, 4, 4)), np.zeros((20, 4, 4))), "not brighter",
                     id="swapped"),
        pytest.param(lambda: RecordedMovieNoise(light=np.ones((20, 4, 4)), light_level=np.nan), "NaN", id="level-nan"),
    ],
)
def test_recorded_movie_noise_rejects_bad_recordings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_recorded_movie_noise_from_files(tmp_path):
    dark, light = _recordings(t=60)
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "light.npy", light)
    rn = RecordedMovieNoise.from_files(tmp_path / "dark.npy", tmp_path / "light.npy")
    assert rn.describe()["frame_shape"] == [12, 16] and rn.describe()["dark"].endswith("dark.npy")
    m = simulate_movie(20, seed=0, shape=(12, 16), noise=rn)
    assert m["noisy"].shape == (20, 12, 16)


def test_docstring_examples_run():
    import doctest

    import rtdenoise.synth
    import rtdenoise.synth.imaging

    for module in (rtdenoise.synth, rtdenoise.synth.imaging):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0
