"""The causal DnCNN family, its front end, checkpoints and the training loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rtdenoise.model.checkpoint import Checkpoint, load
from rtdenoise.model.config import ModelConfig
from rtdenoise.model.frontend import FrontEnd
from rtdenoise.model.streaming import CausalModel
from rtdenoise.synth import simulate
from rtdenoise.train import TrainConfig, lr_at, train

ARCHS = [
    pytest.param(dict(arch="subspace", depth=3, width=8, dilations=[1, 2, 1], rank=4, taps=4), id="subspace"),
    pytest.param(dict(arch="subspace", depth=3, width=8, dilations=[1, 2, 1], rank=6, taps=4, hemoglobin=[480.0, 595.0],
                      mix=True), id="subspace-hemoglobin-mix"),
    pytest.param(dict(arch="subspace", depth=3, width=8, dilations=[1, 2, 1], rank=6, taps=4, hemoglobin=[480.0, 595.0],
                      sensor=list(np.linspace(0.2, 1.0, 152)), mix=True), id="subspace-hemoglobin-sensor"),
    pytest.param(dict(arch="spectral", depth=3, width=8, dilations=[]), id="spectral"),
    pytest.param(dict(arch="2d", depth=3, width=4, dilations=[]), id="2d"),
]


def _perturbed(cfg: ModelConfig, seed: int = 0) -> CausalModel:
    """A model whose last layer is not (near) zero, so outputs depend on the whole trunk."""
    torch.manual_seed(seed)
    net = cfg.build()
    with torch.no_grad():
        net.layers[-1].conv.weight.normal_(0, 0.05)
    return net.eval()


def _features(cfg: ModelConfig, frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(cfg.frontend(1).normalize(frames[None]).features)


@pytest.mark.parametrize("kw", ARCHS)
@pytest.mark.parametrize("lag", [0, 2])
def test_causal_prefix_outputs_do_not_change_when_more_input_arrives(kw, lag):
    cfg = ModelConfig(lag=lag, **kw)
    net = _perturbed(cfg)
    x = _features(cfg, simulate(40, seed=1, photons=2000)["noisy"])
    with torch.no_grad():
        full = net(x)
        prefix = net(x[:, :25])
        changed = x.clone()
        changed[:, 25:] += 3.0
        after = net(changed)
    torch.testing.assert_close(prefix, full[:, :25])
    torch.testing.assert_close(after[:, :25], full[:, :25])
    assert not torch.allclose(after[:, 25:], full[:, 25:])


@pytest.mark.parametrize("kw", ARCHS)
@pytest.mark.parametrize("chunk", [1, 3, 40])
def test_step_in_chunks_equals_one_pass(kw, chunk):
    cfg = ModelConfig(lag=1, **kw)
    net = _perturbed(cfg)
    x = _features(cfg, simulate(40, seed=2, photons=800)["noisy"])
    with torch.no_grad():
        whole = net(x)
        state = net.init_state(1)
        parts = []
        for i in range(0, 40, chunk):
            out, state = net.step(x[:, i : i + chunk], state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mix", [False, True], ids=["own", "mix"])
def test_untrained_subspace_model_is_the_identity_lag_frames_late(mix):
    cfg = ModelConfig(lag=2, depth=3, width=8, dilations=[], rank=4, taps=4, mix=mix)
    net = cfg.build().eval()
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(out[:, 2:], x[:, :-2, :4])


def test_a_mixing_filter_reaches_the_other_coefficients_and_its_own_does_not():
    # The last layer's bias set so output 0 takes coefficient 1 at the current frame: with
    # mix it does, without it that weight has nowhere to go but coefficient 0's own window.
    x = torch.randn(1, 12, 8)
    outs = {}
    for mix in (False, True):
        cfg = ModelConfig(lag=0, depth=2, width=4, dilations=[], rank=4, taps=3, mix=mix)
        net = cfg.build().eval()
        with torch.no_grad():
            net.layers[-1].conv.bias.zero_()
            net.layers[-1].conv.bias[(1 * 3 + 2) if mix else 2] = 1.0  # output 0, input 1 (mix) / its own, tap t
            outs[mix] = net(x)
    torch.testing.assert_close(outs[True][:, :, 0], x[:, :, 0] + x[:, :, 1])
    torch.testing.assert_close(outs[False][:, :, 0], 2 * x[:, :, 0])


def test_receptive_field_counts_dilations_and_taps():
    assert ModelConfig(arch="spectral", depth=4, kernel_t=3, dilations=[1, 2, 4, 1]).receptive_field == 17
    assert ModelConfig(arch="subspace", depth=4, kernel_t=3, dilations=[1, 2, 4, 1], taps=8).receptive_field == 24


@pytest.mark.parametrize(
    "kw, match",
    [
        pytest.param(dict(arch="3d"), "arch", id="arch"),
        pytest.param(dict(depth=1, dilations=[]), "depth", id="depth"),
        pytest.param(dict(depth=3, dilations=[1, 2]), "one entry per layer", id="dilations"),
        pytest.param(dict(lag=-1), "lag", id="lag"),
        pytest.param(dict(lag=8, taps=8), "taps", id="taps"),
        pytest.param(dict(rank=0), "rank", id="rank"),
    ],
)
def test_bad_model_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kw)


@pytest.mark.parametrize("kw, names", [
    pytest.param(dict(arch="subspace"), ["layers.0.previous", "layers.1.previous", "layers.2.previous", "taps.previous"],
                 id="subspace"),
    pytest.param(dict(arch="spectral"), ["layers.0.previous", "layers.1.previous", "layers.2.previous", "delay.previous"],
                 id="spectral"),
    pytest.param(dict(arch="2d"), ["layers.0.previous", "layers.1.previous", "layers.2.previous", "delay.previous"],
                 id="2d"),
])
def test_state_names_come_from_the_module_tree(kw, names):
    net = ModelConfig(depth=3, width=8, dilations=[], rank=4, taps=4, **kw).build()
    assert net.state_names() == names
    assert list(net.init_state(2)) == names
    assert type(net).arch == kw["arch"]


def test_state_keys_are_checked():
    cfg = ModelConfig(depth=3, width=8, dilations=[], rank=4, taps=4)
    net = cfg.build()
    state = net.init_state(1)
    net.check_state(state)
    state.pop("taps.previous")
    state["bogus"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['taps.previous'\], extra \['bogus'\]"):
        net.check_state(state)


@pytest.mark.parametrize("hemoglobin", [None, [480.0, 595.0]], ids=["data", "hemoglobin"])
def test_frontend_is_causal_and_chunk_invariant(hemoglobin):
    cfg = ModelConfig(rank=6, horizon=20, cov_horizon=30, hemoglobin=hemoglobin)
    x = simulate(90, seed=3, photons=3000)["noisy"][None].astype(np.float64)
    whole = cfg.frontend(1).normalize(x).features
    fe = cfg.frontend(1)
    parts = [fe.normalize(x[:, i : i + 7]).features for i in range(0, 90, 7)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-5, atol=1e-5)
    changed = x.copy()
    changed[:, 50:] *= 2
    again = cfg.frontend(1).normalize(changed).features
    np.testing.assert_array_equal(again[:, :50], whole[:, :50])


def test_hemoglobin_s_spectra_are_the_first_directions_of_the_subspace_and_hold_its_absorption():
    """With ``hemoglobin`` the first 4 directions are b·ε/s and ε/s (orthonormalised), the
    rest tracked from data beside them; a recording whose only change is hemodynamics then
    lies in the subspace far better than when every direction is estimated from the data."""
    from rtdenoise.synth import SpectralConfig
    from rtdenoise.synth.spectral import hemoglobin_extinction

    quiet = SpectralConfig(event_rate_hz=(0.0, 0.0), slow_std=(0.0, 0.0), state_level=(0.0, 0.0),
                           hemo_std=(0.05, 0.05), hemo_cutoff_hz=(0.5, 0.5))
    rec = simulate(200, seed=7, photons=3000, signal=quiet)
    ref = rec["clean"] + rec["static"]
    outside = {}
    for hb in (None, [480.0, 595.0]):
        fe = ModelConfig(rank=8, hemoglobin=hb).frontend(1)
        norm = fe.normalize(rec["noisy"][None])
        u, b, sc = norm.basis[0], norm.baseline[0], norm.scale[0]  # (T, W, 8), (T, W)
        np.testing.assert_allclose(u.transpose(0, 2, 1) @ u, np.broadcast_to(np.eye(8), (200, 8, 8)), atol=1e-4)
        if hb:
            eps = np.stack(hemoglobin_extinction(rec["wavelengths"]), axis=1)  # (W, 2)
            known = np.concatenate([b[..., None] * eps, np.broadcast_to(eps, (200, *eps.shape))], axis=2) / sc[..., None]
            known /= np.linalg.norm(known, axis=1, keepdims=True)
            first4 = u[:, :, :4]
            residual = known - first4 @ (first4.transpose(0, 2, 1) @ known)
            assert np.abs(residual).max() < 1e-3
        d = (ref - b) / sc
        inside = np.einsum("tw,twk->tk", d, u)
        rest = d - np.einsum("tk,twk->tw", inside, u)
        outside[bool(hb)] = (rest[10:] ** 2).sum() / (d[10:] ** 2).sum()
    assert outside[True] < 0.5 * outside[False]


def test_hemoglobin_needs_a_subspace_with_room_for_its_spectra():
    with pytest.raises(ValueError, match="rank must be >= 4"):
        ModelConfig(rank=3, hemoglobin=[480.0, 595.0])
    with pytest.raises(ValueError, match="band .* of a subspace model"):
        ModelConfig(arch="spectral", hemoglobin=[480.0, 595.0])
    with pytest.raises(ValueError, match="band"):
        ModelConfig(hemoglobin=[595.0, 480.0])


def test_a_known_sensor_spectrum_is_the_fifth_direction_and_holds_the_sensor_s_signal():
    """With ``sensor`` the 5th direction is the sensor's spectrum over s (after hemoglobin's 4),
    each stream its own, from the first frame."""
    from rtdenoise.synth import SpectralConfig

    quiet = SpectralConfig(hemo_std=(0.0, 0.0), state_level=(0.0, 0.0), slow_std=(0.0, 0.0))
    recs = [simulate(200, seed=s, photons=3000, signal=quiet) for s in (8, 9)]  # two sensors: peaks differ
    sensors = np.stack([r["emission"] * r["signature"] for r in recs])
    assert not np.allclose(sensors[0] / sensors[0].max(), sensors[1] / sensors[1].max(), atol=1e-2)
    fe = ModelConfig(rank=8, hemoglobin=[480.0, 595.0], sensor=[]).frontend(2)
    fe.sensor[:] = sensors  # each stream its own, as in training
    norm = fe.normalize(np.stack([r["noisy"] for r in recs]))
    for i in range(len(recs)):
        u, sc = norm.basis[i], norm.scale[i]
        np.testing.assert_allclose(u.transpose(0, 2, 1) @ u, np.broadcast_to(np.eye(8), (200, 8, 8)), atol=1e-4)
        own = sensors[i] / sc  # (T, W)
        first5 = u[:, :, :5]
        residual = own - np.einsum("twk,tk->tw", first5, np.einsum("twk,tw->tk", first5, own))
        assert (residual ** 2).sum() < 1e-6 * (own ** 2).sum()
    # without it the 5th direction is the data's: near the sensor's, never on it
    tracked = ModelConfig(rank=8, hemoglobin=[480.0, 595.0]).frontend(1).normalize(recs[0]["noisy"][None]).basis[0]
    own = sensors[0] / norm.scale[0]
    residual = own - np.einsum("twk,tk->tw", tracked[:, :, :5], np.einsum("twk,tw->tk", tracked[:, :, :5], own))
    assert (residual ** 2).sum() > 1e-3 * (own ** 2).sum()


def test_a_sensor_spectrum_is_checked_and_a_model_without_one_says_how_to_give_it(tmp_path):
    hb = [480.0, 595.0]
    with pytest.raises(ValueError, match="give hemoglobin too"):
        ModelConfig(sensor=[])
    with pytest.raises(ValueError, match="rank must be >= 5"):
        ModelConfig(rank=4, hemoglobin=hb, sensor=[])
    for bad in ([1.0] * 10, [0.0] * 152, [1.0] * 151 + [float("nan")]):
        with pytest.raises(ValueError, match="152 finite values"):
            ModelConfig(hemoglobin=hb, sensor=bad)
    cfg = ModelConfig(arch="subspace", depth=3, width=8, dilations=[1, 2, 1], rank=6, taps=4, hemoglobin=hb, sensor=[])
    ck = Checkpoint(name="takes-a-sensor", config=cfg, state_dict=cfg.build().state_dict())
    rec = simulate(30, seed=1, photons=2000)
    from rtdenoise.denoise import denoise

    with pytest.raises(ValueError, match="has none: give it once with `rtdenoise set-sensor"):
        denoise(rec["noisy"], model=ck)
    out = denoise(rec["noisy"], model=ck.for_sensor(rec["emission"] * rec["signature"]))
    assert out.shape == rec["noisy"].shape and np.isfinite(out).all()
    with pytest.raises(ValueError, match="trained without --sensor"):
        load("spectral-lag0").for_sensor(rec["emission"])
    with pytest.raises(ValueError, match="152 finite values"):
        ck.for_sensor(rec["emission"][:100])


def test_training_with_a_known_sensor_learns_on_each_instance_s_own(tmp_path):
    from rtdenoise.synth.dataset import SpectralDataset
    from rtdenoise.train import draw_batch, normalize_batch

    cfg = ModelConfig(arch="subspace", depth=3, width=8, dilations=[1, 2, 1], rank=6, taps=4, hemoglobin=[480.0, 595.0],
                      sensor=[])
    ds = SpectralDataset(window=40, seed=0)
    noisy, target, sensor = ds.batch(np.random.default_rng(3), 3, sensor=True)
    again = ds.batch(np.random.default_rng(3), 3)  # asking for the sensors draws nothing more
    np.testing.assert_array_equal(again[0], noisy)
    x, t = normalize_batch(noisy, target, cfg, sensor=sensor)
    assert x.shape == (3, 40, 12) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="give sensor="):
        normalize_batch(noisy, target, cfg)
    x2, _ = draw_batch(ds, np.random.default_rng(3), 3, cfg)
    torch.testing.assert_close(x2, x)
    shifted, t2 = draw_batch(ds, np.random.default_rng(3), 3, cfg, sensor_shift_nm=2.0)  # a lab's spectrum, off
    assert not torch.allclose(shifted, x) and torch.isfinite(shifted).all() and t2.shape == t.shape
    with pytest.raises(ValueError, match="this model takes none"):
        train(tmp_path / "n.pt", config=TrainConfig(steps=1, workers=0, sensor_shift_nm=2.0), progress=False)
    tc = TrainConfig(steps=2, batch=2, window=40, workers=0, val_instances=4)
    ck = train(tmp_path / "s.pt", model=cfg, config=tc, progress=False)
    assert load(tmp_path / "s.pt").config.sensor == [] and np.isfinite(ck.provenance["final_val_loss"])


def test_frontend_reconstructs_counts_from_its_own_target():
    cfg = ModelConfig(arch="spectral", lag=0)
    rec = simulate(50, seed=4, photons=2000)
    fe = cfg.frontend(1)
    norm = fe.normalize(rec["noisy"][None])
    target = fe.target((rec["clean"] + rec["static"])[None], norm)
    back = fe.to_counts(target, norm)[0]
    np.testing.assert_allclose(back, rec["clean"] + rec["static"], rtol=1e-4)


@pytest.mark.parametrize("rank", [0, 3], ids=["no-subspace", "subspace"])
def test_frontend_maps_outputs_back_with_the_statistics_lag_frames_earlier(rank):
    # A lag-k model's output row t belongs to frame t - k, so it is mapped back with that
    # frame's statistics: a perfect lag-k output gives each frame back k rows late,
    # whatever the chunking.
    lag = 3
    cfg = ModelConfig(arch="subspace" if rank else "spectral", lag=lag, rank=max(rank, 1), taps=4)
    rec = simulate(40, seed=5, photons=2000)
    ref = (rec["clean"] + rec["static"])[None].astype(np.float64)
    now = ModelConfig(**(cfg.to_dict() | {"lag": 0})).frontend(1)  # the same statistics, not delayed
    norm_now = now.normalize(rec["noisy"][None])
    target = now.target(ref, norm_now)
    late = np.concatenate([np.zeros_like(target[:, :lag]), target[:, :-lag]], axis=1)
    fe = cfg.frontend(1)
    back = np.concatenate([fe.to_counts(late[:, i : i + 7], fe.normalize(rec["noisy"][None, i : i + 7]))
                           for i in range(0, 40, 7)], axis=1)
    np.testing.assert_allclose(back[:, lag:], now.to_counts(target, norm_now)[:, :-lag], rtol=1e-6)



def _output_baseline_error(slow_horizon: int, fade: float) -> tuple[np.ndarray, np.ndarray]:
    """A steady spectrum (a bright band on a dark offset) dimming by ``fade`` over 3000
    frames, with shot noise: the output baseline's error against the true level, and the
    running baseline's, per frame and bin, once the slow mean is settled (1500 frames)."""
    rng = np.random.default_rng(0)
    w, n = 152, 3000
    level = 100 + 2000 * np.exp(-0.5 * ((np.arange(w) - 70) / 25.0) ** 2)
    true = level[None] * (1 - fade * np.arange(n) / n)[:, None]
    x = rng.poisson(true)[None].astype(np.float64)
    fe = ModelConfig(slow_horizon=slow_horizon).frontend(1)
    norm = fe.normalize(x)
    return (norm.out_baseline[0] - true)[1500:], (norm.baseline[0] - true)[1500:]


def test_a_spectral_output_baseline_sheds_the_running_baseline_s_per_bin_noise():
    # Steady light: the output's baseline (a 1500-frame mean plus the 150-frame mean's
    # departure from it, smoothed over 2 bins) carries under a third of the running
    # baseline's noise power.
    out, running = _output_baseline_error(1500, 0.0)
    assert np.mean(out**2) < np.mean(running**2) / 3
    off, running_off = _output_baseline_error(0, 0.0)
    np.testing.assert_array_equal(off, running_off)  # slow_horizon=0: the running baseline itself


def test_a_spectral_output_baseline_follows_bleaching_as_fast_as_the_running_baseline():
    # A 30 % fade over the recording is smooth across wavelength, so the output's baseline
    # keeps up with it as the running baseline does (the lag of a 150-frame mean, 1.5 % of
    # the level, is the error left in both).
    out, running = _output_baseline_error(1500, 0.3)
    np.testing.assert_allclose(out.mean(axis=1), running.mean(axis=1), rtol=0.02)
    assert np.mean(np.abs(out)) < 1.02 * np.mean(np.abs(running))


def test_a_spectral_output_baseline_is_the_running_baseline_while_that_is_cumulative():
    rec = simulate(150, seed=6, photons=2000)
    norm = ModelConfig().frontend(1).normalize(rec["noisy"][None])
    np.testing.assert_array_equal(norm.out_baseline, norm.baseline)
    # only a subspace front end has it (elsewhere the network returns every bin of (clean − b)/s)
    with pytest.raises(ValueError, match="slow_horizon is for a spectral subspace"):
        FrontEnd((16, 16), horizon=10, floor=1.0, slow_horizon=100)
    for arch, kw in (("imaging-unet", dict(depth=4, width=8)), ("spectral", {})):
        assert ModelConfig(arch=arch, **kw).slow_horizon == 0  # the default per family
        with pytest.raises(ValueError, match="slow_horizon is for the subspace family"):
            ModelConfig(arch=arch, slow_horizon=1500, **kw)
    with pytest.raises(ValueError, match=r"slow_horizon must be 0 or >= horizon \(150\)"):
        ModelConfig(slow_horizon=100)


def test_a_spectral_output_baseline_is_the_same_whatever_the_chunking_batching_or_lag():
    # Past the first horizon (where the slow mean takes over): a stream stepped in chunks,
    # beside other streams or through a one-stream view, gets exactly the same outputs.
    cfg = ModelConfig(rank=4, taps=4, lag=3, horizon=20, cov_horizon=30, slow_horizon=60)
    x = np.stack([simulate(200, seed=s, photons=p)["noisy"] for s, p in ((7, 500), (8, 3000), (9, 1500))])
    out = np.random.default_rng(1).normal(size=(3, 200, 4)).astype(np.float32)

    def run(fe, xs, outs, step):
        return np.concatenate([fe.to_counts(outs[:, i : i + step], fe.normalize(xs[:, i : i + step]))
                               for i in range(0, xs.shape[1], step)], axis=1)

    whole = run(cfg.frontend(3), x, out, 200)
    np.testing.assert_array_equal(run(cfg.frontend(3), x, out, 7), whole)
    for k in range(3):
        np.testing.assert_array_equal(run(cfg.frontend(1), x[k : k + 1], out[k : k + 1], 1), whole[k : k + 1])
    fe = cfg.frontend(3)
    views = [fe.view(k) for k in range(3)]
    for i in range(0, 200, 9):  # streams stepped in turn through their views
        for k, v in enumerate(views):
            got = v.to_counts(out[k : k + 1, i : i + 9], v.normalize(x[k : k + 1, i : i + 9]))
            np.testing.assert_array_equal(got, whole[k : k + 1, i : i + 9])
    assert not np.array_equal(whole, run(ModelConfig(**(cfg.to_dict() | {"slow_horizon": 0})).frontend(3), x, out, 200))

def _tiny_ckpt(**kw) -> Checkpoint:
    cfg = ModelConfig(depth=3, width=8, dilations=[], rank=4, taps=4, **kw)
    return Checkpoint("tiny", cfg, _perturbed(cfg).state_dict(), wavelengths=list(np.linspace(480, 595, 152)), fs=5.0)


def test_checkpoint_roundtrip_describes_itself(tmp_path):
    ck = _tiny_ckpt(lag=2)
    ck.provenance = {"seed": 3, "steps": 10}
    ck.save(tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled objects inside
    assert raw["format_version"] == 1 and raw["lag"] == 2 and raw["frame_shape"] == [152]
    back = load(tmp_path / "m.pt")
    assert back.config == ck.config and back.lag == 2 and back.receptive_field == ck.receptive_field
    assert back.provenance == {"seed": 3, "steps": 10}
    for k, v in ck.state_dict.items():
        torch.testing.assert_close(back.state_dict[k], v)
    info = back.info()
    assert "state_dict" not in info and info["parameters"] > 0 and info["normalization"]["kind"]


def test_corrupt_missing_and_foreign_checkpoints_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable rtdenoise checkpoint"):
        load(bad)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an rtdenoise checkpoint"):
        load(tmp_path / "foreign.pt")
    d = _tiny_ckpt().to_dict()
    d["format_version"] = 99
    torch.save(d, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load(tmp_path / "future.pt")
    d = _tiny_ckpt().to_dict()
    d["state_dict"].pop("layers.0.conv.weight")
    torch.save(d, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged"):
        load(tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="no shipped model named 'nonexistent'"):
        load("nonexistent")


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.02e-3, rel=0.1)


def test_training_reduces_validation_loss_and_resumes(tmp_path):
    out = tmp_path / "m.pt"
    model = ModelConfig(depth=3, width=16, dilations=[1, 2, 1], rank=4, taps=4)
    cfg = TrainConfig(steps=60, batch=4, window=64, val_every=30, val_instances=8, workers=0, lr=3e-3, warmup=5)
    ck = train(out, model=model, config=cfg, progress=False)
    pv = ck.provenance
    assert pv["steps"] == 60 and pv["final_val_loss"] < pv["val_loss_raw"]
    assert load(out).provenance["steps"] == 60
    ck2 = train(out, model=model, config=TrainConfig(**{**cfg.to_dict(), "steps": 80}), progress=False, resume=True)
    assert ck2.provenance["steps"] == 80
    assert [h["step"] for h in ck2.provenance["history"]][:2] == [30, 60]


def test_fine_tuning_starts_from_the_given_model_keeps_its_config_and_records_it(tmp_path):
    model = ModelConfig(depth=3, width=16, dilations=[1, 2, 1], rank=4, taps=4)
    cfg = TrainConfig(steps=40, batch=4, window=64, val_every=20, val_instances=8, workers=0, lr=3e-3, warmup=5)
    base = train(tmp_path / "base.pt", model=model, config=cfg, progress=False)
    # Zero steps of fine-tuning: the weights are the init's, and so is the validation loss.
    same = train(tmp_path / "same.pt", init=base, config=TrainConfig(**{**cfg.to_dict(), "steps": 0}), progress=False)
    assert same.config == base.config
    assert all(torch.equal(same.state_dict[k], v) for k, v in base.state_dict.items())
    rec = same.provenance["init"]
    assert rec["name"] == "base" and rec["steps"] == 40 and rec["val_loss"] == pytest.approx(same.provenance["final_val_loss"])
    # A few steps on other noise move the weights; the record still says where they started.
    from rtdenoise.synth import DetectorConfig, DetectorNoise

    noisier = DetectorNoise(DetectorConfig(read_noise=(40.0, 40.0)))
    tuned = train(tmp_path / "tuned.pt", init=base, noise=noisier, config=TrainConfig(**{**cfg.to_dict(), "steps": 20}),
                  progress=False)
    assert not all(torch.equal(tuned.state_dict[k], v) for k, v in base.state_dict.items())
    assert load(tmp_path / "tuned.pt").provenance["init"]["name"] == "base"
    with pytest.raises(ValueError, match="config comes from init"):
        train(tmp_path / "x.pt", init=base, model=ModelConfig(lag=2), config=cfg, progress=False)
    # Resuming keeps the first run's record (the weights before any step), and needs the same init.
    more = TrainConfig(**{**cfg.to_dict(), "steps": 30})
    resumed = train(tmp_path / "tuned.pt", init=base, noise=noisier, config=more, progress=False, resume=True)
    assert resumed.provenance["steps"] == 30 and resumed.provenance["init"] == tuned.provenance["init"]
    with pytest.raises(ValueError, match="resume it with the same init"):
        train(tmp_path / "tuned.pt", noise=noisier, config=more, progress=False, resume=True)
    with pytest.raises(ValueError, match="not started from it"):
        train(tmp_path / "base.pt", init=tuned, config=more, progress=False, resume=True)


def test_training_refuses_mismatched_settings(tmp_path):
    with pytest.raises(ValueError, match="window"):
        train(tmp_path / "m.pt", model=ModelConfig(lag=3, taps=4), config=TrainConfig(window=3, workers=0), progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tmp_path / "m.pt", config=TrainConfig(workers=0), progress=False, resume=True)


def test_training_refuses_a_device_it_cannot_use(tmp_path):
    for bad in ("tpu", "nonsense", "meta"):
        with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
            train(tmp_path / "m.pt", config=TrainConfig(workers=0, steps=1, device=bad), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            train(tmp_path / "m.pt", config=TrainConfig(workers=0, steps=1, device="cuda"), progress=False)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.gpu
def test_training_on_a_gpu_follows_the_cpu_run(tmp_path, monkeypatch):
    """The same seed on the GPU follows the CPU's run (to the rounding of other kernels: the
    weights differ by far less than training moved them), and the checkpoint it writes is on
    the CPU, loads anywhere and resumes."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = ModelConfig(arch="imaging-unet", depth=3, width=4, horizon=300)
    cfg = TrainConfig(steps=20, batch=2, window=16, patch=(16, 16), val_every=10, val_instances=4, workers=0, lr=1e-3,
                      warmup=2)
    start = train(tmp_path / "start.pt", model=model, config=TrainConfig(**{**cfg.to_dict(), "steps": 0}), progress=False)
    cpu = train(tmp_path / "cpu.pt", model=model, config=cfg, progress=False)
    gpu = train(tmp_path / "gpu.pt", model=model, progress=False,
                config=TrainConfig(**{**cfg.to_dict(), "device": "cuda", "instances_on_device": False}))
    assert all(v.device.type == "cpu" for v in gpu.state_dict.values())
    assert torch.cuda.max_memory_allocated() > 0 and torch.cuda.get_device_name(0) in gpu.provenance["machine"]
    moved = max(float((cpu.state_dict[k] - v).abs().max()) for k, v in start.state_dict.items())
    apart = max(float((gpu.state_dict[k] - v).abs().max()) for k, v in cpu.state_dict.items())
    assert moved > 1e-3 and apart < 0.1 * moved, (moved, apart)
    assert gpu.provenance["final_val_loss"] == pytest.approx(cpu.provenance["final_val_loss"], rel=0.02)
    assert load(tmp_path / "gpu.pt").provenance["train"]["device"] == "cuda"
    more = train(tmp_path / "gpu.pt", model=model, progress=False, resume=True,
                 config=TrainConfig(**{**cfg.to_dict(), "steps": 25, "device": "cuda", "instances_on_device": False}))
    assert more.provenance["steps"] == 25
    # Noise and front end made on the card: other draws, the same distribution, so it learns as much.
    card = train(tmp_path / "card.pt", model=model, config=TrainConfig(**{**cfg.to_dict(), "device": "cuda"}),
                 progress=False)
    assert "on cuda" in card.provenance["instances_made"]
    assert card.provenance["final_val_loss"] < start.provenance["final_val_loss"]


TORCH_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def _on(device: str):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")
    return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_the_front_end_on_a_torch_device_gives_the_host_s_instances(device):
    """normalize_batch_on (what a GPU run uses) against normalize_batch, on the same movies:
    the shipped imaging model's front end (following motion), cold starts; settled starts
    leave their warm-up out and start from a settled mean, some instances of a batch only."""
    from rtdenoise.model.checkpoint import load as load_model
    from rtdenoise.synth.dataset import ImagingDataset
    from rtdenoise.train import SETTLED_BURN, normalize_batch, normalize_batch_on

    on = _on(device)
    cfg = load_model("imaging-lag0").config
    noisy, target = ImagingDataset(window=24, patch=(30, 30)).batch(np.random.default_rng(0), 12)
    x, t = normalize_batch(noisy, target, cfg)
    xt, tt = normalize_batch_on(on(noisy), on(target), cfg)
    assert xt.device.type == device
    torch.testing.assert_close(xt.cpu(), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(tt.cpu(), t, rtol=0, atol=1e-4)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    xs, ts = normalize_batch_on(on(noisy), on(target), cfg, settled=0.5, generator=gen)
    warm = ts[:, 0].isnan().flatten(1).all(dim=1).cpu()
    assert 0 < int(warm.sum()) < 12
    assert ts[warm, :SETTLED_BURN].isnan().all() and torch.isfinite(ts[warm, SETTLED_BURN:]).all()
    assert torch.isfinite(ts[~warm]).all() and torch.equal(xs[~warm].cpu(), xt[~warm].cpu())
    assert 0.5 < float(xs[warm, 0].std()) < 2.0  # a settled mean: frame 0 is noise in noise units, not 0
    with pytest.raises(ValueError, match="for images"):
        normalize_batch_on(torch.ones(2, 8, 152), torch.ones(2, 8, 152), ModelConfig())
    # what a GPU run trains on: scenes from the workers, noise and front end where the network is
    from rtdenoise.train import _CleanBatches, _finish_on

    clean, detector = next(iter(_CleanBatches(ImagingDataset(window=24, patch=(32, 32)), 3, [0])))
    assert clean.shape == (3, 24, 32, 32) and detector.shape == (3, 5)
    x, t = _finish_on(clean, detector, cfg, settled=0.0)
    assert x.shape == t.shape == (3, 24, 32, 32) and torch.isfinite(x).all() and torch.isfinite(t).all()
    assert 0.5 < float(x[:, 12:].std()) < 2.0  # noise in noise units, once the mean has a few frames


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_the_front_end_replayed_as_a_cuda_graph_gives_the_same_instances(device):
    """FrontEndGraphs (what a GPU run's instances go through): one graph for the batch shape,
    replayed from each batch's own start (settled or cold), outputs the eager path's and not
    overwritten by the next batch's. Off a CUDA device it runs eagerly and captures nothing.
    On a GPU a thread pins memory meanwhile, as the DataLoader's does in training."""
    import threading

    from rtdenoise.model.checkpoint import load as load_model
    from rtdenoise.synth.dataset import ImagingDataset
    from rtdenoise.train import FrontEndGraphs, normalize_batch_on

    on = _on(device)
    cfg = load_model("imaging-lag0").config
    ds = ImagingDataset(window=24, patch=(30, 30))
    graphs, kept, stop, pinned = FrontEndGraphs(), [], threading.Event(), []

    def pin():
        try:
            while not stop.is_set():
                pinned.append(torch.empty(1 << 16).pin_memory())
                pinned[:] = pinned[-4:]
        except Exception as e:  # noqa: BLE001 (what a capture would make the DataLoader's thread raise)
            pinned.append(e)

    pinner = threading.Thread(target=pin, daemon=True)
    if device == "cuda":
        pinner.start()
    for seed in (0, 1, 2):
        noisy, target = (on(a) for a in ds.batch(np.random.default_rng(seed), 6))
        got = []
        for g in (None, graphs):
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            got.append(normalize_batch_on(noisy, target, cfg, settled=0.5 if seed else 0.0, generator=gen, graphs=g))
        (xe, te), (xg, tg) = got
        torch.testing.assert_close(xg, xe, rtol=0, atol=1e-5)
        torch.testing.assert_close(tg, te, rtol=0, atol=1e-5, equal_nan=True)
        kept.append((xg, xg.clone()))
    stop.set()
    if device == "cuda":
        pinner.join()
        assert pinned and all(isinstance(t, torch.Tensor) for t in pinned)  # pinned throughout, unhindered
    assert graphs.failed is None and len(graphs._graphs) == (1 if device == "cuda" else 0)
    assert all(torch.equal(x, was) for x, was in kept)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_pmt_noise_drawn_by_torch_has_the_numpy_model_s_distribution(device):
    from rtdenoise.synth.noise import PMTConfig, PMTNoise

    on = _on(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    noise = PMTNoise(PMTConfig(gain=(2.0, 2.0), excess_noise=(1.5, 1.5), electronic_noise=(0.1, 0.1),
                               offset=(3.0, 3.0), dark_rate=(0.01, 0.01)))
    clean = np.full((100, 32, 32), 4.0, np.float32)
    clean[:, :16] = 0.4  # mostly empty pixels: the other branch of the numpy sampler
    ref, static = noise.sample(clean, np.random.default_rng(1), fs=30.0)
    out, static_t = PMTNoise.sample_torch(on(clean[None]), on(noise.draw(np.random.default_rng(2))[None]), gen)
    assert out.device.type == device
    out = out[0].cpu().numpy()
    assert float(static_t) == pytest.approx(static[0, 0])
    for part in (np.s_[:, :16], np.s_[:, 16:]):
        assert out[part].mean() == pytest.approx(ref[part].mean(), rel=0.02)
        assert out[part].var() == pytest.approx(ref[part].var(), rel=0.05)
        assert (out[part] == 0).mean() == pytest.approx((ref[part] == 0).mean(), abs=0.01)


def test_the_pooled_loss_sees_block_means_and_only_movies_train_with_it(tmp_path):
    from rtdenoise.train import lagged_loss, pooled_loss

    t = torch.randn(2, 5, 16, 16)
    offset = torch.full_like(t, 0.3)  # an error in every block's mean
    checker = 0.3 * (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None, :]).float()  # none in any block's mean
    torch.testing.assert_close(pooled_loss(t + offset, t, 0), lagged_loss(t + offset, t, 0))
    assert float(pooled_loss(t + checker, t, 0)) < 1e-12 < float(lagged_loss(t + checker, t, 0))
    t[:, 0] = float("nan")  # a settled instance's warm-up frame: left out, as by the per-pixel loss
    torch.testing.assert_close(pooled_loss(t + offset, t, 0), torch.tensor(0.09))
    with pytest.raises(ValueError, match="pooled loss is for movies"):
        train(tmp_path / "m.pt", config=TrainConfig(workers=0, steps=1, pooled_loss=1.0), progress=False)


def test_settled_starts_begin_from_a_settled_baseline_and_leave_their_warm_up_out_of_the_loss():
    from rtdenoise.synth.dataset import ImagingDataset
    from rtdenoise.train import SETTLED_BURN, lagged_loss, normalize_batch

    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, floor=1.0, horizon=300)
    noisy, target = ImagingDataset(window=24, patch=(16, 16)).batch(np.random.default_rng(0), 6)
    x, t = normalize_batch(noisy, target, cfg)  # all cold: the first frame is its own mean
    assert torch.isfinite(t).all() and x[:, 0].abs().max() == 0
    xs, ts = normalize_batch(noisy, target, cfg, settled=1.0, rng=np.random.default_rng(1))
    assert ts[:, :SETTLED_BURN].isnan().all() and torch.isfinite(ts[:, SETTLED_BURN:]).all()
    # a settled mean barely moves (rate 1/horizon) and sits near the expected counts: frame 0 is
    # noise in noise units (about unit variance), not 0
    assert 0.5 < float(xs[:, 0].std()) < 2.0
    mixed_x, mixed_t = normalize_batch(noisy, target, cfg, settled=0.5, rng=np.random.default_rng(2))
    warm = mixed_t[:, 0].isnan().flatten(1).all(dim=1)
    assert 0 < int(warm.sum()) < 6
    out = torch.zeros_like(mixed_t)
    expected = torch.cat([mixed_t[~warm].flatten(), mixed_t[warm, SETTLED_BURN:].flatten()]).pow(2).mean()
    torch.testing.assert_close(lagged_loss(out, mixed_t, 0), expected)
    with pytest.raises(ValueError, match="spectral subspace"):
        normalize_batch(np.ones((2, 24, 152), np.float32), np.ones((2, 24, 152), np.float32), ModelConfig(), settled=1.0)


def test_training_with_settled_starts_runs_and_is_recorded(tmp_path):
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, floor=1.0, horizon=50)
    tc = TrainConfig(steps=3, batch=2, window=20, patch=(16, 16), workers=0, val_instances=8, settled=0.5)
    ck = train(tmp_path / "s.pt", model=cfg, config=tc, progress=False)
    assert ck.provenance["train"]["settled"] == 0.5 and np.isfinite(ck.provenance["final_val_loss"])
    with pytest.raises(ValueError, match="window must be longer"):
        train(tmp_path / "w.pt", model=cfg, config=dataclasses.replace(tc, window=16), progress=False)
    with pytest.raises(ValueError, match="subspace"):
        train(tmp_path / "p.pt", config=TrainConfig(steps=1, workers=0, settled=0.5), progress=False)


# ----------------------------------------------------------------------------- imaging families

IMAGING = [pytest.param("imaging-unet", id="unet"), pytest.param("imaging-fact", id="factorized")]


def _imaging_net(arch: str, lag: int = 2, rates=()) -> CausalModel:
    net = ModelConfig(arch=arch, depth=3, width=4, lag=lag, floor=1.0, rates=list(rates)).build().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("rates", [pytest.param((), id="fir"), pytest.param((0.5, 0.1), id="leaky")])
@pytest.mark.parametrize("arch", IMAGING)
@pytest.mark.parametrize("chunk", [1, 4, 20])
def test_imaging_step_in_chunks_equals_one_pass_and_is_causal(arch, chunk, rates):
    net = _imaging_net(arch, rates=rates)
    x = torch.randn(2, 20, 24, 36)  # a grid the U-Net takes as it is (multiples of 4)
    with torch.no_grad():
        whole = net(x)
        state = net.init_state(2, frame=(24, 36))
        parts = []
        for i in range(0, 20, chunk):
            out, state = net.step(x[:, i : i + chunk], state)
            parts.append(out)
        changed = x.clone()
        changed[:, 12:] += 2.0
        after = net(changed)
    assert whole.shape == x.shape
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[:, :12], whole[:, :12])
    assert not torch.allclose(after[:, 12:], whole[:, 12:])


@pytest.mark.parametrize("arch", IMAGING)
def test_imaging_state_follows_the_frame_size(arch):
    net = _imaging_net(arch)
    a, b = net.state_shapes(1, (64, 64)), net.state_shapes(1, (64, 128))
    assert list(a) == net.state_names() and "delay.previous" in a
    assert a["delay.previous"] == (1, 2, 1, 64, 64) and b["delay.previous"] == (1, 2, 1, 64, 128)
    if arch == "imaging-unet":  # the long filters run at a quarter of the resolution
        assert a["quarter_time.0.previous"][-2:] == (16, 16)
    assert ModelConfig(arch=arch, depth=4).receptive_field == 31  # 1 + 2 (1 + 2 + 4 + 8)


def test_leaky_integrators_are_exponential_moving_averages_whatever_the_chunking():
    from rtdenoise.model.imaging import Leaky

    rates = [1.0, 0.5, 0.05]
    layer = Leaky(rates)
    x = torch.randn(2, 30, 1, 5, 6)
    e0 = torch.randn(2, 1, 3, 5, 6)
    expect, e = [], e0[:, 0].clone()
    for t in range(30):  # the recurrence, frame by frame
        e = e + torch.tensor(rates)[None, :, None, None] * (x[:, t] - e)
        expect.append(e)
    expect = torch.stack(expect, dim=1)
    whole, last = layer(x, e0)  # the input, then its integrals
    torch.testing.assert_close(whole[:, :, :1], x)
    torch.testing.assert_close(whole[:, :, 1:], expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole[:, :, 1:2], x)  # rate 1 keeps the frame
    torch.testing.assert_close(last, expect[:, -1:], atol=1e-5, rtol=1e-5)
    first, mid = layer(x[:, :7], e0)
    rest, _ = layer(x[:, 7:], mid)
    torch.testing.assert_close(torch.cat([first, rest], dim=1)[:, :, 1:], expect, atol=1e-5, rtol=1e-5)
    phases = Leaky(rates, 4, scale=2)  # per pixel: on 4 channels, rate-major (channel c of rate r at 4r + c)
    y = torch.randn(2, 5, 4, 3, 3)
    out, _ = phases(y, torch.zeros(2, 1, 12, 3, 3))
    torch.testing.assert_close(out[:, :, 4 + 4 * 2 : 4 + 4 * 3], Leaky([rates[2]], 4)(y, torch.zeros(2, 1, 4, 3, 3))[0][:, :, 4:])
    net = _imaging_net("imaging-unet", rates=rates)
    assert net.state_shapes(1, (16, 20))["leaky.previous"] == (1, 1, 12, 8, 10)  # one frame per rate, on the ½ grid


@pytest.mark.parametrize("arch", IMAGING)
def test_a_model_grown_leaky_integrators_denoises_as_before_until_tuned(arch):
    from rtdenoise.model.imaging import with_leaky

    net = _imaging_net(arch)
    ck = Checkpoint("m", net.config, net.state_dict(), fs=30.0)
    grown = with_leaky(ck, [0.5, 0.1])
    assert grown.config.rates == [0.5, 0.1] and ck.config.rates == []
    x = torch.randn(1, 12, 24, 36)
    with torch.no_grad():
        torch.testing.assert_close(grown.model()(x), net(x))
    with pytest.raises(ValueError, match="without leaky"):
        with_leaky(grown, [0.2])


def test_untrained_imaging_model_is_close_to_the_identity_lag_frames_late():
    net = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=1).build().eval()
    x = torch.randn(1, 6, 16, 16)
    with torch.no_grad():
        out = net(x)
    assert (out[:, 1:] - x[:, :-1]).abs().mean() < 0.1 * x.abs().mean()


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(arch="imaging-unet", width=0), "width", id="no-width"),
    pytest.param(dict(arch="imaging-fact", kernel_w=4), "odd", id="even-kernel"),
    pytest.param(dict(arch="imaging-unet", lag=3), "lag <= 2", id="unet-lag-out-of-view"),
    pytest.param(dict(arch="imaging-unet", rates=[0.0]), "rates", id="leaky-rate-zero"),
    pytest.param(dict(arch="imaging-fact", rates=[1.5]), "rates", id="leaky-rate-above-one"),
    pytest.param(dict(arch="spectral", rates=[0.5]), "imaging", id="leaky-on-spectra"),
    pytest.param(dict(arch="imaging-unet", gain=0.0), "gain", id="gain-zero"),
    pytest.param(dict(arch="imaging-unet", offset=float("nan")), "offset", id="offset-nan"),
])
def test_bad_imaging_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kw)


def _cold_means(n: int, seed: int = 0):
    """A scene's per-pixel baseline (dim field, bright 6 px squares) and the mean of ``n`` Poisson frames of it."""
    truth = np.full((64, 64), 5.0)
    for y in range(4, 64, 16):
        for x in range(4, 64, 16):
            truth[y : y + 6, x : x + 6] = 60.0
    b = np.random.default_rng(seed).poisson(truth, (n, 64, 64)).mean(axis=0)[None, None]
    return truth, b, np.sqrt(b + 1.0)


@pytest.mark.parametrize("n", [1, 4, 30])
def test_an_image_baseline_of_few_frames_sheds_noise_and_keeps_structure(n):
    """The output's baseline while the running mean is cold: closer to the truth than the
    mean itself, over the frame and on the sharp bright squares."""
    from rtdenoise.model.frontend import shrink_baseline

    truth, b, s = _cold_means(n)
    shrunk = b - shrink_baseline(b, s, np.array([[n]]), 300)
    err, err_shrunk = (b - truth) ** 2, (shrunk - truth) ** 2
    assert err_shrunk.mean() < 0.9 * err.mean()
    bright = truth > 30
    assert err_shrunk[..., bright].mean() < 1.02 * err[..., bright].mean()


def test_baseline_shrinking_fades_out_once_settled_and_skips_frames_before_the_start():
    from rtdenoise.model.frontend import shrink_baseline

    _, b, s = _cold_means(4)
    h = 50
    counts = np.array([[0, 1, h, 3 * h // 2, 2 * h, 5 * h]])
    b5, s5 = np.repeat(b, 6, axis=1), np.repeat(s, 6, axis=1)
    size = np.abs(shrink_baseline(b5, s5, counts, h)).mean(axis=(2, 3))[0]
    assert size[0] == 0 and size[4] == 0 and size[5] == 0
    assert size[1] > size[2] > size[3] > 0  # less noise in the mean, then the fade


def test_baseline_shrinking_is_the_same_in_numpy_and_torch():
    """The host front end and the CUDA one (TorchFrontEnd) share it; blur3 is scipy's
    [1, 2, 1]/4 filter with edges repeated."""
    from scipy.ndimage import correlate1d

    from rtdenoise.model.frontend import blur3, shrink_baseline

    _, b, s = _cold_means(3)
    k = np.array([0.25, 0.5, 0.25])
    np.testing.assert_allclose(blur3(b), correlate1d(correlate1d(b, k, axis=-1, mode="nearest"), k, axis=-2, mode="nearest"),
                               rtol=1e-12)
    counts = np.array([[3]])
    a = shrink_baseline(b, s, counts, 40)
    t = shrink_baseline(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(counts), 40)
    assert t.dtype == torch.float32 and a.dtype == np.float32
    np.testing.assert_allclose(t.numpy(), a, rtol=1e-6, atol=1e-9)
    scratch = {}  # what a front end keeps between steps: the same numbers, whatever came before
    shrink_baseline(b[..., :20, :30], s[..., :20, :30], counts, 40, scratch)
    for c in (3, 70):
        np.testing.assert_array_equal(shrink_baseline(b, s, np.array([[c]]), 40, scratch).copy(),
                                      shrink_baseline(b, s, np.array([[c]]), 40))


def test_an_image_front_end_shrinks_the_baseline_of_the_frame_each_output_belongs_to():
    """Lag 2: the output of frame t − 2 is shrunk by that frame's count (nothing for the two
    outputs before the start), chunked any way, and a stream in a batch beside a settled one
    gets what it gets alone."""
    from rtdenoise.model.frontend import FrontEnd, shrink_baseline

    h, lag = 10, 2
    x = np.random.default_rng(3).poisson(4.0, (2, 40, 12, 16)).astype(np.float64)

    def outputs(chunks, streams=slice(None)):
        fe = FrontEnd((12, 16), horizon=h, floor=1.0, lag=lag, batch=x[streams].shape[0])
        out, i = [], 0
        for c in chunks:
            norm = fe.normalize(x[streams, i : i + c])
            out.append(fe.to_counts(np.zeros((fe.batch, c, 12, 16)), norm))  # a network that says "no signal"
            i += c
        return np.concatenate(out, axis=1)

    whole = outputs([40])
    for chunks in ([1] * 40, [3, 7, 9, 2, 19], [19, 2, 19]):  # across 2·horizon = frame 20 in several ways
        np.testing.assert_array_equal(outputs(chunks), whole)
    np.testing.assert_array_equal(whole[:, :lag], 0.0)  # before the start: nothing, not even a correction
    fe = FrontEnd((12, 16), horizon=h, floor=1.0, lag=0, batch=2)  # the same statistics, not delayed
    norm = fe.normalize(x)
    for t in (2, 9, 15, 25):  # outputs of frames t - lag, whose count is t - lag + 1
        b, s = norm.baseline[:, t - lag : t - lag + 1], norm.scale[:, t - lag : t - lag + 1]
        want = b - shrink_baseline(b, s, np.full((2, 1), t - lag + 1), h)
        np.testing.assert_allclose(whole[:, t : t + 1], want, rtol=1e-12)
    assert not np.allclose(whole[:, 10], norm.baseline[:, 8])  # shrunk while cold
    np.testing.assert_array_equal(whole[:, 30], norm.baseline[:, 28])  # untouched once settled
    # Stream 1 restarted while stream 0 is settled: in one batch, each as it is alone.
    fe = FrontEnd((12, 16), horizon=h, floor=1.0, lag=0, batch=2)
    fe.normalize(x[:, :30])
    fe.reset(1)
    norm = fe.normalize(x[:, 30:34])
    mixed = fe.to_counts(np.zeros((2, 4, 12, 16)), norm)
    alone = FrontEnd((12, 16), horizon=h, floor=1.0, lag=0, batch=1)
    np.testing.assert_array_equal(mixed[1:], alone.to_counts(np.zeros((1, 4, 12, 16)), alone.normalize(x[1:, 30:34])))
    np.testing.assert_array_equal(mixed[0], norm.baseline[0])


# ----------------------------------------------------------------------------- motion


def _wandering(shifts, photons=20.0, shape=(48, 64), seed=0):
    """A steady scene of blobs (T, H, W) moved by ``shifts`` (T, 2) px: its clean frames and
    Poisson-noisy ones."""
    from rtdenoise.synth.imaging import _fourier_shift

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0] + 40, : shape[1] + 40]
    scene = np.full(yy.shape, 0.1)
    for cy, cx, r in zip(rng.uniform(0, yy.shape[0], 40), rng.uniform(0, yy.shape[1], 40), rng.uniform(2, 5, 40)):
        scene += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    movie = _fourier_shift(np.repeat((photons * scene)[None].astype(np.float32), len(shifts), axis=0), shifts.astype(np.float32))
    clean = np.maximum(movie[:, 20 : 20 + shape[0], 20 : 20 + shape[1]], 0.0).astype(np.float64)
    return clean, rng.poisson(clean).astype(np.float64)


def _follow(shifts, register=True, chunk=None, **kw):
    from rtdenoise.model.frontend import FrontEnd

    clean, noisy = _wandering(shifts, **kw)
    fe = FrontEnd(clean.shape[1:], horizon=100, floor=1.0, register=register)
    chunk = chunk or len(shifts)
    norm = [fe.normalize(noisy[None, i : i + chunk]) for i in range(0, len(shifts), chunk)]
    return fe, clean, np.concatenate([n.baseline for n in norm], axis=1)[0]


def test_a_registered_front_end_follows_rigid_motion_and_keeps_its_baseline_on_the_frame():
    t = np.arange(120)
    true = np.stack([1.5 * np.sin(t / 9.0), 1.0 - np.cos(t / 13.0)], axis=1) * (t[:, None] >= 20)  # still, then a wander
    fe, clean, b = _follow(true)
    np.testing.assert_allclose(fe.shift[0], true[-1], atol=0.05)  # where the field of view is now
    _, _, fixed = _follow(true, register=False)
    late = slice(60, None)
    err = lambda base: float(np.sqrt(np.mean((base[late] - clean[late]) ** 2)))  # noqa: E731
    assert err(b) < 0.25 * err(fixed)  # the moving scene's baseline: on it, not a blur of it
    # Chunked or whole, the same numbers (the shift is state carried between chunks).
    _, _, b7 = _follow(true, chunk=7)
    np.testing.assert_allclose(b7, b, rtol=1e-6, atol=1e-6)


def test_a_registered_front_end_stays_put_without_motion_and_re_anchors_after_a_long_drift():
    fe, clean, b = _follow(np.zeros((80, 2)))
    assert np.abs(fe.shift).max() < 0.05  # the estimate's noise only
    from rtdenoise.model.frontend import FrontEnd

    light = np.random.default_rng(1).poisson(5.0, (1, 120, 32, 32)).astype(np.float64)  # uniform: nothing to register on
    base = {r: FrontEnd((32, 32), horizon=100, floor=1.0, register=r).normalize(light).baseline[0, 60:] for r in (False, True)}
    err = {r: float(np.sqrt(np.mean((b - 5.0) ** 2))) for r, b in base.items()}
    # The shift wanders with the noise; a flat mean moved stays flat, but the re-anchoring and
    # the sub-pixel moves cost some of its averaging (0.28 against 0.24 counts here).
    assert err[True] < 1.3 * err[False]
    ramp = np.clip(np.arange(100.0) - 20.0, 0.0, None)[:, None]
    drift = ramp * [0.4, -0.3]  # still, then 0.5 px a frame: 40 px in all
    inner = (slice(80, None), slice(12, -12), slice(12, -12))  # re-anchored means lost what left the field
    err = {}
    for r in (False, True):
        fe, clean, b = _follow(drift, register=r)
        err[r] = float(np.sqrt(np.mean((b - clean)[inner] ** 2)))
    assert 0 < np.abs(fe.shift).max() <= 10.0  # re-anchored on the way: the shift is against a newer mean
    assert err[True] < 0.3 * err[False], err


def test_only_images_follow_motion():
    with pytest.raises(ValueError, match="imaging families"):
        ModelConfig(register=True)
    from rtdenoise.model.frontend import FrontEnd

    with pytest.raises(ValueError, match="image frames"):
        FrontEnd(152, horizon=10, floor=1.0, register=True)


def test_following_motion_lifts_the_shipped_model_on_a_moving_held_out_movie():
    """The real model on a held-out scene with 1 px of wander: the registered front end
    keeps the moving edges as signal (several dB; benchmarks/results/imaging_motion.md)."""
    from rtdenoise.backends import load_engine
    from rtdenoise.metrics import snr_db
    from rtdenoise.synth import ImagingConfig, simulate_movie

    cfg = ImagingConfig(fs=(30.0, 30.0), decay_s=(2.5, 2.5), rise_s=(0.08, 0.08), motion_px=(1.0, 1.0))
    mov = simulate_movie(200, seed=4235, shape=(64, 64), photons=10.0, config=cfg)
    ck = load("imaging-lag0")
    moving, still = (Checkpoint(ck.name, dataclasses.replace(ck.config, register=r), ck.state_dict, fs=ck.fs) for r in (True, False))
    ref = mov["clean"] + mov["static"]
    fixed = snr_db(load_engine(still, backend="onnxruntime", threads=1).run(mov["noisy"]), ref)
    follows = snr_db(load_engine(moving, backend="onnxruntime", threads=1).run(mov["noisy"]), ref)
    assert follows > fixed + 2.0, (fixed, follows)


def test_a_movie_model_does_not_train_on_patches_smaller_than_the_frames_it_takes(tmp_path):
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4)
    with pytest.raises(ValueError, match=r"training patches of 8 × 8 px \(--patch\): .*16 × 16"):
        train(tmp_path / "m.pt", model=cfg, config=TrainConfig(workers=0, steps=1, patch=(8, 8)), progress=False)
    assert not (tmp_path / "m.pt").exists()
