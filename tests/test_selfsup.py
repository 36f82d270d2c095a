"""Self-supervised fine-tuning on a user's movie: photon splitting shows the network no noise
of its target, the fine-tune learns, and bad input is refused with the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rtdenoise.model.checkpoint import Checkpoint, load
from rtdenoise.model.config import ModelConfig
from rtdenoise.selfsup import SelfSupConfig, finetune, photon_transfer, split_loss, split_photons


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=0, floor=1.0, horizon=20)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "base.pt"
    Checkpoint("base", cfg, cfg.build().state_dict(), fs=30.0).save(path)
    return path


@pytest.fixture(scope="module")
def movie_path(tmp_path_factory):
    from rtdenoise.synth import simulate_movie

    path = tmp_path_factory.mktemp("mov") / "mov.npy"
    np.save(path, simulate_movie(80, seed=4, shape=(32, 32), photons=20)["noisy"])  # ~3.5 photons per pixel
    return path


def test_the_split_deals_each_pixels_photons_between_two_independent_halves():
    # Counts as a digitizer writes them (3 per photon above a dark level of 40).
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, gain=3.0, offset=40.0)
    photons = np.random.default_rng(3).poisson(10.0, (4, 50, 32, 32))
    seen, other = split_photons(3.0 * photons + 40.0, cfg, np.random.default_rng(4), 0.8)
    seen, other = (seen - 40.0) / 3.0, (other - 40.0) / 3.0
    np.testing.assert_allclose(seen + other * 0.25, photons, atol=1e-4)  # every photon dealt once
    assert seen.mean() == pytest.approx(8.0, rel=0.01) and other.mean() == pytest.approx(8.0, rel=0.02)
    assert abs(np.corrcoef(seen.ravel(), other.ravel())[0, 1]) < 0.01  # the same light, independent noise


class _Scaled(torch.nn.Module):
    """Outputs its input's current frame times ``k``: 1 copies the frame's noise, 0 gives the baseline."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, features):
        return self.k * features


def test_a_network_that_copies_its_input_gains_nothing_from_the_split(base):
    # Steady light: the clean scene is the running baseline (output 0). Copying the input adds
    # the input's own noise to the error instead of matching the target's: with keep 0.8 the
    # target's noise variance is 4 times the input's, so copying costs about (1 + 4) / 4.
    # If the target shared the input's noise, copying would win.
    ck = load(base)
    x = np.random.default_rng(1).poisson(20, (4, 40, 32, 32)).astype(np.float32)
    with torch.no_grad():
        copy, mean = (split_loss(_Scaled(k), ck.config, x, np.random.default_rng(2), 0.8).item() for k in (1.0, 0.0))
    assert 1.15 < copy / mean < 1.35


class _Delayed(torch.nn.Module):
    """Outputs, at row t, its input's frame t - ``lag``: a copy of the frame a lag-``lag`` model denoises."""

    def __init__(self, lag: int):
        super().__init__()
        self.lag = lag

    def forward(self, features):
        return torch.cat([torch.zeros_like(features[:, : self.lag]), features[:, : -self.lag]], dim=1)


@pytest.mark.parametrize("lag", [1, 2])
def test_a_lagged_model_is_scored_against_the_frame_it_outputs(lag):
    # Every frame's light differs, so only an output compared with its own frame's target scores
    # well: the lag-k model's row t (frame t - k) against the target's frame t - k.
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=lag, floor=1.0, horizon=20)
    rng = np.random.default_rng(5)
    light = rng.uniform(5.0, 80.0, (1, 40, 1, 1))
    x = rng.poisson(np.broadcast_to(light, (4, 40, 32, 32))).astype(np.float32)
    with torch.no_grad():
        aligned, shifted = (split_loss(m, cfg, x, np.random.default_rng(2), 0.8).item() for m in (_Delayed(lag), _Scaled(1.0)))
    assert aligned < 0.3 * shifted


def test_finetune_learns_from_the_movie_alone_and_says_so(tmp_path, base, movie_path):
    out = tmp_path / "tuned.pt"
    ck = finetune(out, movie_path, model=base, progress=False,
                  config=SelfSupConfig(minutes=5, steps=40, batch=2, window=12, patch=(32, 32), val_every=20))
    s = ck.provenance["self_supervised"]
    assert s["steps"] == 40 and s["from"] == "base" and s["val_loss"] < s["val_loss_before"]
    assert load(out).modality == "imaging"


def test_a_movie_too_dim_to_split_gets_its_units_and_no_steps(tmp_path, base):
    from rtdenoise.synth import simulate_movie

    np.save(tmp_path / "dim.npy", simulate_movie(80, seed=4, shape=(32, 32), photons=1)["noisy"])
    with pytest.warns(UserWarning, match="too dim for photon splitting"):
        ck = finetune(tmp_path / "t.pt", tmp_path / "dim.npy", model=base, progress=False,
                      config=SelfSupConfig(minutes=5, steps=40, batch=2, window=12, patch=(32, 32)))
    s = ck.provenance["self_supervised"]
    assert s["steps"] == 0 and s["photons"] < SelfSupConfig.min_photons and ck.config.gain != 1.0
    assert "too dim" in s["skipped"]


def test_photon_transfer_finds_a_cameras_counts_per_photon_and_dark_level():
    from rtdenoise.synth import SCMOSNoise, simulate_movie
    from rtdenoise.synth.noise import SCMOSConfig

    cam = SCMOSNoise(SCMOSConfig(gain=(2.0, 2.0), offset=(100.0, 100.0), read_noise=(0.5, 0.5)))
    gain, offset = photon_transfer(simulate_movie(200, seed=5, shape=(64, 64), photons=40, noise=cam)["noisy"])
    assert gain == pytest.approx(2.0, rel=0.1) and offset == pytest.approx(100.0, abs=3.0)
    assert photon_transfer(np.full((50, 16, 16), 7.0)) is None  # no shot noise, no line


def test_finetune_puts_the_model_in_the_movies_units_first(tmp_path, base, movie_path):
    """The same movie as a digitizer writes it (4 counts per photon above a dark level of 50)
    gives a model whose output is the photon movie's output in those counts."""
    from rtdenoise.backends import load_engine
    from rtdenoise.backends.torch_engine import TorchEngine

    photons = np.load(movie_path).astype(np.float64)
    np.save(tmp_path / "adu.npy", (4.0 * photons + 50.0).astype(np.float32))
    no_steps = SelfSupConfig(minutes=0, batch=1, window=12, patch=(32, 32))
    a = finetune(tmp_path / "a.pt", movie_path, model=base, progress=False, config=no_steps)
    b = finetune(tmp_path / "b.pt", tmp_path / "adu.npy", model=base, progress=False, config=no_steps)
    assert b.config.gain == pytest.approx(4 * a.config.gain, rel=1e-6) and a.config.gain != 1.0
    assert b.config.offset == pytest.approx(4 * a.config.offset + 50, rel=1e-6)
    assert b.provenance["self_supervised"]["gain"] == b.config.gain
    ref = 4.0 * load_engine(a, backend="torch").run(photons) + 50.0
    np.testing.assert_allclose(load_engine(b, backend="onnxruntime").run(4.0 * photons + 50.0), ref, rtol=1e-5)
    on_device = TorchEngine(b, device="cpu", device_frontend=True)  # the front end CUDA runs
    np.testing.assert_allclose(on_device.run(4.0 * photons + 50.0), ref, rtol=1e-5)
    kept = finetune(tmp_path / "c.pt", tmp_path / "adu.npy", model=base, progress=False,
                    config=dataclasses.replace(no_steps, calibrate=False))
    assert (kept.config.gain, kept.config.offset) == (1.0, 0.0)


@pytest.mark.parametrize("bad, match", [
    pytest.param("spectral", "for imaging models", id="spectral-model"),
    pytest.param("short", "needs at least 24", id="too-short"),
    pytest.param("nan", "NaN", id="nan"),
    pytest.param("tiny", "smaller than this model's 16 × 16", id="frames-too-small"),
    pytest.param("tiny-patch", "windows of 8 × 8 px", id="patch-too-small"),
])
def test_bad_input_is_refused_with_the_fix(tmp_path, base, bad, match):
    model, movie, config = base, tmp_path / "m.npy", SelfSupConfig(window=12)
    np.save(movie, np.ones((100, 32, 32), np.float32))
    if bad == "spectral":
        model = "spectral-lag0"
    elif bad == "short":
        np.save(movie, np.ones((20, 32, 32), np.float32))
    elif bad == "tiny":
        np.save(movie, np.ones((100, 8, 8), np.float32))
    elif bad == "tiny-patch":
        config = SelfSupConfig(window=12, patch=(8, 8))
    else:
        arr = np.ones((100, 32, 32), np.float32)
        arr[50, 1, 1] = np.nan
        np.save(movie, arr)
    with pytest.raises(ValueError, match=match):
        finetune(tmp_path / "x.pt", movie, model=model, progress=False, config=config)
    assert not (tmp_path / "x.pt").exists()


def test_the_cli_sets_a_model_to_your_movies_counts_then_learns_it(tmp_path, base, movie_path, capsys):
    from rtdenoise.cli import main

    np.save(tmp_path / "adu.npy", (4.0 * np.load(movie_path) + 50.0).astype(np.float32))
    assert main(["train", str(tmp_path / "mine.pt"), "--self-supervised", str(tmp_path / "adu.npy"), "--init", str(base),
                 "--window", "12", "--batch", "2", "--patch", "32", "32", "--minutes", "0.05", "--keep", "0.7"]) == 0
    s = load(tmp_path / "mine.pt").provenance["self_supervised"]
    assert s["steps"] > 0 and s["config"]["keep"] == 0.7 and 3.0 < s["gain"] < 8.0 and s["skipped"] is None
    assert "counts per photon" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    pytest.param(["--keep", "1.0"], "strictly between 0 and 1", id="keep-all"),
    pytest.param(["--keep", "0.5", "--self-supervised", None], "for --self-supervised", id="keep-alone"),
])
def test_the_cli_refuses_a_share_of_photons_that_leaves_no_target(tmp_path, base, movie_path, args, match, capsys):
    from rtdenoise.cli import main

    argv = ["train", str(tmp_path / "x.pt"), "--init", str(base), "--self-supervised", str(movie_path), "--window", "12"]
    if args[-1] is None:  # --keep without --self-supervised
        argv, args = argv[:4], args[:2]
    assert main(argv + args) != 0
    assert match in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
