"""Self-supervised fine-tuning on a user's movie: the blind spot hides what it must, the
fine-tune learns, and bad input is refused with the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rtdenoise.model.checkpoint import Checkpoint, load
from rtdenoise.model.config import ModelConfig
from rtdenoise.selfsup import SelfSupConfig, _mask, finetune, masked_loss, photon_transfer


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
    np.save(path, simulate_movie(80, seed=4, shape=(32, 32), photons=8)["noisy"])
    return path


def test_the_blind_spot_replaces_each_hidden_pixel_by_a_neighbour_never_itself():
    rng = np.random.default_rng(0)
    x = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)  # every value distinct
    masked, mask = _mask(x, rng, 0.05)
    assert 0.02 < mask.mean() < 0.08
    assert (masked[mask] != x[mask]).all() and (masked[~mask] == x[~mask]).all()
    for b, t, y, xx in np.argwhere(mask)[:20]:
        (src,) = np.argwhere(x == masked[b, t, y, xx])  # every value of x is distinct
        assert (src[:2] == [b, t]).all()  # from the same frame
        assert 0 < max(abs(src[2] - y), abs(src[3] - xx)) <= 2  # within its 5 x 5 neighbourhood, never itself


def test_the_masked_loss_does_not_see_the_hidden_noise(base):
    # A model that copies its input (the untrained residual is close to the identity) gains
    # nothing from a pixel's own noise at a hidden pixel: its loss there stays at the noise level.
    ck = load(base)
    net = ck.model()
    x = np.random.default_rng(1).poisson(20, (2, 12, 32, 32)).astype(np.float32)
    with torch.no_grad():
        loss = masked_loss(net, ck.config, x, np.random.default_rng(2), 0.05).item()
    assert loss > 0.5  # ~2 noise variances apart; an input leak would give ~0


def test_finetune_learns_from_the_movie_alone_and_says_so(tmp_path, base, movie_path):
    out = tmp_path / "tuned.pt"
    ck = finetune(out, movie_path, model=base, progress=False,
                  config=SelfSupConfig(minutes=5, steps=40, batch=2, window=12, patch=(32, 32), val_every=20))
    s = ck.provenance["self_supervised"]
    assert s["steps"] == 40 and s["from"] == "base" and s["val_loss"] < s["val_loss_before"]
    assert load(out).modality == "imaging"


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
])
def test_bad_input_is_refused_with_the_fix(tmp_path, base, bad, match):
    model, movie = base, tmp_path / "m.npy"
    np.save(movie, np.ones((100, 32, 32), np.float32))
    if bad == "spectral":
        model = "spectral-lag0"
    elif bad == "short":
        np.save(movie, np.ones((20, 32, 32), np.float32))
    else:
        arr = np.ones((100, 32, 32), np.float32)
        arr[50, 1, 1] = np.nan
        np.save(movie, arr)
    with pytest.raises(ValueError, match=match):
        finetune(tmp_path / "x.pt", movie, model=model, progress=False, config=SelfSupConfig(window=12))
    assert not (tmp_path / "x.pt").exists()


def test_the_cli_sets_a_model_to_your_movies_counts(tmp_path, base, movie_path, capsys):
    from rtdenoise.cli import main

    np.save(tmp_path / "adu.npy", (4.0 * np.load(movie_path) + 50.0).astype(np.float32))
    assert main(["train", str(tmp_path / "mine.pt"), "--self-supervised", str(tmp_path / "adu.npy"), "--init", str(base),
                 "--window", "12"]) == 0
    ck = load(tmp_path / "mine.pt")
    assert ck.provenance["self_supervised"]["steps"] == 0 and 3.0 < ck.config.gain < 8.0
    assert "counts per photon" in capsys.readouterr().out
