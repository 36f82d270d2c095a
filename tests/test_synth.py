"""The spectral signal model, noise models and the on-the-fly dataset: properties."""

from __future__ import annotations

import numpy as np
import pytest

from rtdenoise.synth import DetectorConfig, DetectorNoise, RecordedNoise, SpectralConfig, sample_instance, simulate
from rtdenoise.synth.dataset import SpectralDataset
from rtdenoise.synth.noise import poisson
from rtdenoise.synth.spectral import emission_spectrum, hemoglobin_extinction, lowpass_noise, release_events

QUIET = dict(
    event_rate_hz=(0.0, 0.0),
    slow_std=(0.0, 0.0),
    hemo_std=(0.0, 0.0),
    state_level=(0.0, 0.0),
)


def test_zero_dynamics_give_photons_times_emission():
    cfg = SpectralConfig(**QUIET, photons=(2000.0, 2000.0))
    inst = sample_instance(cfg, 50, np.random.default_rng(0))
    np.testing.assert_allclose(inst.clean, 2000.0 * inst.emission[None, :] * np.ones((50, 1)), rtol=1e-12)
    assert inst.emission.max() == pytest.approx(1.0)


def test_brain_states_are_minutes_long_levels_high_in_wake_and_rem():
    from rtdenoise.synth.spectral import STATES, brain_states

    trace, labels = brain_states(np.random.default_rng(3), 20 * 60 * 5, fs=5.0, level=0.2, dwell_s=90.0)
    assert abs(trace.mean()) < 1e-12 and set(np.unique(labels)) <= {0, 1, 2} and STATES[1] == "nrem"
    bouts = np.flatnonzero(np.diff(labels)) + 1
    assert 4 <= len(bouts) <= 40  # minutes long: 20 minutes hold a handful to a few dozen bouts
    assert not (np.diff(labels)[bouts - 1] == 0).any()  # a bout always ends in another state
    settled = [b for b in np.split(np.arange(len(labels)), bouts) if len(b) > 100]  # past the 10 s ramp
    level = {s: np.mean([trace[b[60:]].mean() for b in settled if labels[b[0]] == s]) for s in (0, 1)}
    assert level[0] - level[1] == pytest.approx(0.2, abs=0.01)  # wake above NREM by the level
    # In the draws by default, the states are part of the activity the network must keep.
    rec = simulate(1500, seed=2, photons=1000, signal=SpectralConfig(state_level=(0.15, 0.15), state_dwell_s=(60.0, 60.0)))
    assert rec["states"].shape == (1500,) and len(np.unique(rec["states"])) >= 2
    assert "states" not in simulate(50, seed=2, signal=SpectralConfig(state_level=(0.0, 0.0)))


def test_multiplicative_model_is_exact_in_log_space():
    cfg = SpectralConfig(photons=(1000.0, 1000.0))
    inst = sample_instance(cfg, 200, np.random.default_rng(1))
    log_mod = np.log(inst.clean / (1000.0 * inst.emission))
    coeffs = np.stack([inst.activity, inst.hbo2, inst.hb], axis=1)
    np.testing.assert_allclose(log_mod, coeffs @ inst.spectra, atol=1e-10)


def test_hemoglobin_peaks_where_the_tables_say():
    wl = np.arange(480, 596, 1.0)
    hbo2, hb = hemoglobin_extinction(wl)
    # HbO2 has its alpha/beta bands near 542 and 577 nm, Hb one band near 555 nm.
    local_max = lambda y: wl[1:-1][(y[1:-1] > y[:-2]) & (y[1:-1] > y[2:])]
    assert any(abs(p - 542) <= 2 for p in local_max(hbo2))
    assert any(abs(p - 577) <= 2 for p in local_max(hbo2))
    assert any(abs(p - 555) <= 2 for p in local_max(hb))
    with pytest.raises(ValueError, match="outside the hemoglobin table"):
        hemoglobin_extinction(np.array([400.0, 500.0]))


def test_emission_peak_and_red_shoulder():
    wl = np.linspace(480, 595, 152)
    e = emission_spectrum(wl, peak_nm=510, autofluorescence=0.0)
    assert abs(wl[np.argmax(e)] - 510) < 1.5
    assert e[np.searchsorted(wl, 540)] > 0.2  # the shoulder keeps the red side up


def test_release_events_rise_in_one_frame_and_decay():
    rng = np.random.default_rng(0)
    trace, onsets, amps = release_events(rng, 2000, fs=5.0, rate_hz=0.05, amplitude=(0.1, 0.1), decay_s=1.0)
    assert len(onsets) > 5
    decay = np.exp(-1.0 / 5.0)
    for o, a in zip(onsets, amps):
        if o > 0 and (onsets == o).sum() == 1:
            # The whole amplitude arrives in the onset frame, on top of what is left decaying.
            assert trace[o] - decay * trace[o - 1] == pytest.approx(a, rel=1e-9)
    # Exponential decay: one time constant (5 frames) after an isolated event, 1/e is left.
    o = onsets[np.argmax(np.diff(np.r_[onsets, 10**9]))]
    if o + 6 < len(trace):
        assert trace[o + 5] / trace[o] == pytest.approx(np.exp(-1.0), rel=0.05)


def test_lowpass_noise_has_its_std_and_no_fast_content():
    rng = np.random.default_rng(0)
    x = lowpass_noise(rng, 20000, fs=5.0, cutoff_hz=0.2, std=0.05)
    assert x.std() == pytest.approx(0.05, rel=0.15)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 0.2)
    assert spec[f > 1.0].sum() < 0.01 * spec.sum()


def test_shot_noise_variance_grows_linearly_with_intensity():
    rng = np.random.default_rng(0)
    noise = DetectorNoise(DetectorConfig(read_noise=(0, 0), offset=(0, 0), fixed_pattern=(0, 0), drift=(0, 0)))
    for level in (20.0, 500.0, 20000.0):  # both the exact Poisson and the Gaussian branch
        clean = np.full((4000, 8), level)
        noisy, static = noise.sample(clean, rng, fs=5.0)
        assert np.all(static == 0)
        assert (noisy - clean).var() == pytest.approx(level, rel=0.05)
        assert np.all(noisy == np.rint(noisy))  # counts are integers


def test_read_noise_std_and_offset_match_their_parameters():
    rng = np.random.default_rng(0)
    noise = DetectorNoise(DetectorConfig(read_noise=(8, 8), offset=(300, 300), fixed_pattern=(0, 0), drift=(0, 0)))
    noisy, static = noise.sample(np.zeros((5000, 16)), rng, fs=5.0)
    assert np.all(static == 300)
    assert (noisy - 300).std() == pytest.approx(8.0, rel=0.03)
    assert (noisy - 300).mean() == pytest.approx(0.0, abs=0.1)


def test_poisson_helper_matches_mean_and_variance():
    rng = np.random.default_rng(2)
    lam = np.full(200_000, 150.0)
    x = poisson(rng, lam)
    assert x.mean() == pytest.approx(150.0, rel=0.01)
    assert x.var() == pytest.approx(150.0, rel=0.03)


def _recordings(t=400, w=152, level=1000.0, seed=0):
    rng = np.random.default_rng(seed)
    dark = 100.0 + 5.0 * rng.standard_normal((t, w))
    light = 100.0 + level + np.sqrt(level) * rng.standard_normal((t, w))
    return dark, light


def test_recorded_noise_is_rescaled_by_sqrt_signal_over_light_level():
    dark, light = _recordings(t=3000, w=4, level=1000.0)
    rn = RecordedNoise(dark, light)
    rng = np.random.default_rng(0)
    for signal in (250.0, 4000.0):
        clean = np.full((2000, 4), signal)
        noisy, static = rn.sample(clean, rng, fs=5.0)
        np.testing.assert_allclose(static, dark.mean(axis=0))
        resid = noisy - clean - static
        # shot part: light fluctuation (var ≈ 1000 + 25) × signal / 1000; dark part: var 25.
        expected = (1000.0 + 25.0) * signal / 1000.0 + 25.0
        assert resid.var() == pytest.approx(expected, rel=0.1)


def test_recorded_noise_windows_are_drawn_independently():
    dark, light = _recordings(t=500, w=4)
    rn = RecordedNoise(dark, light)
    noisy, _ = rn.sample(np.zeros((100, 4)), np.random.default_rng(3), fs=5.0)
    # zero signal: the output is a dark window exactly
    starts = [i for i in range(401) if np.allclose(noisy, dark[i : i + 100])]
    assert len(starts) == 1


@pytest.mark.parametrize(
    "dark, light, match",
    [
        pytest.param(np.zeros((10, 5)), np.ones((10, 6)), "same spectrometer", id="bin-mismatch"),
        pytest.param(np.zeros(10), np.ones((10, 5)), r"\(frames, wavelengths\)", id="1d"),
        pytest.param(np.full((10, 5), np.nan), np.ones((10, 5)), "NaN", id="nan"),
        pytest.param(np.ones((10, 5)), np.zeros((10, 5)), "not brighter", id="swapped"),
        pytest.param(np.zeros((1, 5)), np.ones((10, 5)), "at least 2 frames", id="too-short"),
    ],
)
def test_recorded_noise_rejects_bad_recordings(dark, light, match):
    with pytest.raises(ValueError, match=match):
        RecordedNoise(dark, light)


def test_recorded_noise_with_wrong_bins_for_the_model_names_both():
    dark, light = _recordings(w=150)
    with pytest.raises(ValueError, match="150 bins.*152"):
        RecordedNoise(dark, light, n_bins=152)


def test_recorded_noise_shorter_than_a_window_is_refused():
    dark, light = _recordings(t=50)
    with pytest.raises(ValueError, match="fewer than one window"):
        SpectralDataset(noise=RecordedNoise(dark, light), window=64)


def test_recorded_noise_from_files(tmp_path):
    dark, light = _recordings(t=300)
    np.save(tmp_path / "dark.npy", dark)
    np.savez(tmp_path / "light.npz", frames=light)
    rn = RecordedNoise.from_files(tmp_path / "dark.npy", tmp_path / "light.npz", n_bins=152)
    ds = SpectralDataset(noise=rn, window=64, seed=0)
    noisy, target = next(iter(ds))
    assert noisy.shape == target.shape == (64, 152)
    with pytest.raises(FileNotFoundError):
        RecordedNoise.from_files(tmp_path / "missing.npy", tmp_path / "light.npz")


def test_seeds_reproduce_and_differ():
    a = simulate(64, seed=5)
    b = simulate(64, seed=5)
    c = simulate(64, seed=6)
    np.testing.assert_array_equal(a["noisy"], b["noisy"])
    assert not np.array_equal(a["noisy"], c["noisy"])
    ds1, ds2 = SpectralDataset(window=32, seed=9), SpectralDataset(window=32, seed=9)
    for (n1, t1), (n2, t2), _ in zip(iter(ds1), iter(ds2), range(3)):
        np.testing.assert_array_equal(n1, n2)
        np.testing.assert_array_equal(t1, t2)


def test_dataset_yields_noisy_and_target_forever():
    ds = SpectralDataset(window=48, seed=0)
    it = iter(ds)
    for _ in range(5):
        noisy, target = next(it)
        assert noisy.dtype == target.dtype == np.float32
        assert noisy.shape == (48, 152)
        assert np.isfinite(noisy).all()
        assert np.abs(noisy - target).mean() > 0  # there is noise to remove


def test_domain_randomization_draws_vary_and_fixed_ranges_do_not():
    cfg = SpectralConfig()
    draws = [sample_instance(cfg, 10, np.random.default_rng(i)).params for i in range(20)]
    photons = [d["photons"] for d in draws]
    assert min(photons) >= 100 and max(photons) <= 50_000 and np.std(np.log(photons)) > 0.5
    peaks = {round(d["peak_nm"], 3) for d in draws}
    assert len(peaks) == 20
    fixed = cfg.replace(emission_peak_nm=(512.0, 512.0))
    assert {sample_instance(fixed, 10, np.random.default_rng(i)).params["peak_nm"] for i in range(5)} == {512.0}


def test_any_grid_and_frame_rate():
    cfg = SpectralConfig(wl_start=500, wl_stop=600, n_bins=64, fs=20.0)
    rec = simulate(100, seed=0, signal=cfg)
    assert rec["noisy"].shape == (100, 64)
    assert rec["fs"] == 20.0


@pytest.mark.parametrize(
    "changes, match",
    [
        pytest.param(dict(n_bins=1), "n_bins", id="bins"),
        pytest.param(dict(wl_stop=400), "wl_stop", id="band"),
        pytest.param(dict(fs=0), "fs", id="fs"),
        pytest.param(dict(photons=(10.0, 1.0)), "photons", id="range-order"),
        pytest.param(dict(decay_s=(-1.0, 1.0)), "decay_s", id="negative"),
    ],
)
def test_bad_configs_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        SpectralConfig(**changes).validate()


def test_config_roundtrip_and_unknown_keys():
    cfg = SpectralConfig(photons=(500.0, 500.0))
    assert SpectralConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SpectralConfig fields.*colour"):
        SpectralConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown DetectorConfig"):
        DetectorConfig.from_dict({"gain": [1, 1], "bogus": [0, 0]})


def test_mixed_noise_draws_each_instance_from_one_source_by_weight():
    from rtdenoise.synth import MixedNoise

    rng = np.random.default_rng(0)
    dark = rng.normal(100.0, 8.0, (300, 152))
    light = rng.poisson(1500.0, (300, 152)) + rng.normal(100.0, 8.0, (300, 152))
    rec = RecordedNoise(dark, light)
    mix = MixedNoise([rec, DetectorNoise()], [3, 1])
    assert mix.describe()["weights"] == [0.75, 0.25] and mix.describe()["sources"][0]["kind"] == "recorded"
    clean = np.full((20, 152), 500.0)
    statics = [mix.sample(clean, rng, fs=5.0)[1] for _ in range(400)]
    from_recording = np.mean([np.allclose(s, rec.dark_mean) for s in statics])
    assert 0.68 < from_recording < 0.82  # each instance wholly from one source, 3:1
    for bad in ([1], [0, 0], [1, -1], [1, float("nan")]):
        with pytest.raises(ValueError, match="weight"):
            MixedNoise([rec, DetectorNoise()], bad)
