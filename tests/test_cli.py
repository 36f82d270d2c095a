"""The offline verbs end to end on real files: simulate, info, denoise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdenoise.cli import main
from rtdenoise.denoise import denoise
from rtdenoise.io import load_arrays, load_frames
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig


@pytest.fixture
def model_path(tmp_path):
    cfg = ModelConfig(depth=3, width=8, dilations=[], rank=4, taps=4, lag=1)
    net = cfg.build()
    ck = Checkpoint("tiny-lag1", cfg, net.state_dict(), wavelengths=list(np.linspace(480, 595, 152)), fs=5.0)
    path = tmp_path / "tiny.pt"
    ck.save(path)
    return path


def test_simulate_writes_everything_for_any_length(tmp_path, capsys):
    out = tmp_path / "rec.npz"
    assert main(["simulate", str(out), "--frames", "77", "--seed", "3", "--photons", "1500", "--read-noise", "8"]) == 0
    arrays = load_arrays(out)
    assert arrays["noisy"].shape == arrays["clean"].shape == (77, 152)
    for key in ("static", "wavelengths", "signature", "eps_hbo2", "eps_hb", "activity", "hbo2", "hb", "event_onsets"):
        assert key in arrays
    config = json.loads(arrays["config_json"].tobytes().decode())
    assert config["seed"] == 3 and config["noise"]["config"]["read_noise"] == [8.0, 8.0]
    assert "77 frames" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["rec.npz"]  # no temp files left


def test_simulate_with_recorded_noise(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "dark.npy", 100 + 4 * rng.standard_normal((300, 152)))
    np.save(tmp_path / "light.npy", 1100 + 30 * rng.standard_normal((300, 152)))
    out = tmp_path / "rec.npz"
    args = ["simulate", str(out), "--frames", "50", "--dark", str(tmp_path / "dark.npy"), "--light", str(tmp_path / "light.npy")]
    assert main(args) == 0
    assert json.loads(load_arrays(out)["config_json"].tobytes().decode())["noise"]["kind"] == "recorded"


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--frames", "0"], "--frames must be >= 1", id="zero-frames"),
        pytest.param(["--frames", "5", "--dark", "x.npy"], "both --dark and --light", id="dark-only"),
        pytest.param(["--frames", "5", "--dark", "missing.npy", "--light", "m2.npy"], "missing.npy", id="missing-file"),
    ],
)
def test_simulate_bad_arguments_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert main(["simulate", str(tmp_path / "o.npz"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_info_prints_the_checkpoint(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    text = capsys.readouterr().out
    assert "tiny-lag1" in text and "lag            1 frames" in text and "480.0–595.0 nm in 152 bins" in text
    assert main(["info", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lag"] == 1 and info["frame_shape"] == [152] and info["receptive_field"] == 10  # 1 + 3 layers × 2 + (4 taps − 1)


@pytest.mark.parametrize("fmt", ["npy", "npz", "h5", "mat", "tif"])
def test_denoise_files_in_every_format(tmp_path, model_path, fmt):
    from rtdenoise.io import save_frames
    from rtdenoise.synth import simulate

    frames = simulate(60, seed=1, photons=2000)["noisy"]
    src = tmp_path / f"in.{fmt}"
    save_frames(src, frames, key="frames")
    dst = tmp_path / f"out.{fmt}"
    assert main(["denoise", str(src), str(dst), "--model", str(model_path), "--quiet"]) == 0
    out = load_frames(dst)
    assert out.shape == frames.shape
    np.testing.assert_allclose(out, denoise(frames, model=model_path), rtol=1e-5, atol=1e-3)


def test_denoise_chunked_equals_whole(tmp_path, model_path):
    from rtdenoise.synth import simulate

    frames = simulate(50, seed=2, photons=900)["noisy"].astype(np.uint16)
    np.save(tmp_path / "in.npy", frames)
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "a.npy"), "--model", str(model_path), "--quiet"]) == 0
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "b.npy"), "--model", str(model_path),
                 "--chunk", "1", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), rtol=1e-5, atol=1e-3)


def test_denoise_bad_inputs_leave_no_output(tmp_path, model_path, capsys):
    np.save(tmp_path / "narrow.npy", np.ones((20, 150), dtype=np.float32))
    dst = tmp_path / "out.npy"
    assert main(["denoise", str(tmp_path / "narrow.npy"), str(dst), "--model", str(model_path)]) == 2
    err = capsys.readouterr().err
    assert "(152,)" in err and "(150,)" in err
    bad = np.ones((20, 152), dtype=np.float32)
    bad[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert main(["denoise", str(tmp_path / "nan.npy"), str(dst), "--model", str(model_path)]) == 2
    assert "NaN" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert main(["denoise", str(tmp_path / "narrow.npy"), str(dst), "--model", str(corrupt)]) == 2
    assert "not a readable rtdenoise checkpoint" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "missing.npy"), str(dst), "--model", str(model_path)]) == 2
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "nan.npy", "narrow.npy", "tiny.pt"]


def test_auto_backend_on_a_cpu_is_the_fastest_measured_for_the_model(monkeypatch):
    import torch

    from rtdenoise.backends import load_engine
    from rtdenoise.model.checkpoint import load

    if torch.cuda.is_available():
        pytest.skip("on a GPU, auto picks TensorRT or CUDA torch")
    measured = load(None).metrics["fastest_cpu_backend"]  # written by benchmarks/model_cards.py
    assert load_engine(None, backend="auto").backend == measured
    monkeypatch.setenv("RTDENOISE_CPU_BACKEND", "torch")
    assert load_engine(None, backend="auto").backend == "torch"


def test_imaging_end_to_end_simulate_train_denoise_info(tmp_path, capsys):
    mov, model, out = tmp_path / "mov.npz", tmp_path / "img.pt", tmp_path / "den.tif"
    assert main(["simulate", str(mov), "--modality", "imaging", "--frames", "40", "--shape", "36", "44",
                 "--photons", "5", "--seed", "2"]) == 0
    arrays = load_arrays(mov)
    assert arrays["noisy"].shape == arrays["clean"].shape == (40, 36, 44)
    n_neurons = arrays["traces"].shape[0]
    assert set(np.unique(arrays["footprint_neuron"])) <= set(range(n_neurons))
    assert main(["train", str(model), "--modality", "imaging", "--steps", "4", "--batch", "2", "--window", "12",
                 "--patch", "32", "32", "--workers", "0"]) == 0
    assert main(["denoise", str(mov), str(out), "--model", str(model), "--quiet"]) == 0
    den = load_frames(out)
    assert den.shape == (40, 36, 44) and den.dtype == np.float32
    capsys.readouterr()
    assert main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "imaging" and info["frame_shape"] == [None, None] and info["lag"] == 0
    assert info["frame_sizes"] == {"min": [16, 16], "max": None} and info["fs"] > 0
    assert info["config"]["arch"] == "imaging-unet" and info["fs_range"] == [10.0, 90.0]
    # a movie into a spectral model: told what to do, nothing written
    assert main(["denoise", str(mov), str(tmp_path / "no.npy"), "--model", "spectral-lag0", "--quiet"]) == 2
    assert "pick an imaging model" in capsys.readouterr().err
    assert not (tmp_path / "no.npy").exists()
    # ...and without --model, a movie gets the shipped imaging default
    assert main(["denoise", str(mov), str(tmp_path / "default.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(load_frames(tmp_path / "default.npy"), denoise(load_arrays(mov)["noisy"], model="imaging-lag0"))


def test_shipped_defaults_follow_the_frames():
    from rtdenoise.model.checkpoint import default_model, load

    assert default_model(1) == "spectral-lag0" and default_model(2) == "imaging-lag0"
    with pytest.raises(ValueError, match="spectra .* or images"):
        default_model(3)  # a colour movie (T, H, W, 3)
    for name in ("imaging-lag0", "imaging-lag2"):
        ck = load(name)
        assert ck.modality == "imaging" and 25 <= ck.fs <= 35
    assert load("imaging-lag0").lag == 0 and load("imaging-lag2").lag == 2


def test_train_init_calibrates_a_shipped_model_to_recorded_noise(tmp_path, capsys):
    rng = np.random.default_rng(0)
    dark, light = tmp_path / "dark.npy", tmp_path / "light.npy"
    np.save(dark, rng.normal(100.0, 8.0, (300, 152)).astype(np.float32))
    np.save(light, (rng.poisson(1500.0, (300, 152)) + rng.normal(100.0, 8.0, (300, 152))).astype(np.float32))
    out = tmp_path / "cal.pt"
    # The architecture comes from the model: a flag that contradicts it is refused, with the fix.
    assert main(["train", str(out), "--init", "spectral-lag5", "--lag", "0", "--steps", "1"]) == 2
    assert "--lag 0 differs from it (lag=5)" in capsys.readouterr().err and not out.exists()
    assert main(["train", str(out), "--init", "spectral-lag0", "--modality", "imaging", "--steps", "1"]) == 2
    assert "is a spectral model, not imaging" in capsys.readouterr().err
    assert main(["train", str(out), "--init", "spectral-lag0", "--prior", "-0.1", "--steps", "1"]) == 2
    assert "--prior is a share" in capsys.readouterr().err and not out.exists()
    assert main(["train", str(out), "--init", "spectral-lag0", "--dark", str(dark), "--light", str(light),
                 "--steps", "3", "--batch", "2", "--workers", "0"]) == 0
    assert "spectral-lag0 before" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "fine-tuned     from spectral-lag0" in info and "noise          mixed" in info
    from rtdenoise.model.checkpoint import load

    ck = load(out)
    assert ck.config == load("spectral-lag0").config and ck.provenance["train"]["lr"] == pytest.approx(2e-3 / 4)
    # by default a quarter of the instances keep the detector model the shipped model was trained on
    mixed = ck.provenance["noise"]
    assert [s["kind"] for s in mixed["sources"]] == ["recorded", "detector"] and mixed["weights"] == [0.75, 0.25]
    from rtdenoise.synth import RecordedNoise
    from rtdenoise.train import calibration_noise

    again = calibration_noise(RecordedNoise.from_files(dark, light), ck, 0.25)  # calibrating a calibrated model
    assert again.describe()["sources"][1] == mixed["sources"][1]  # keeps the detector model it kept
    assert main(["train", str(out), "--init", "spectral-lag0", "--dark", str(dark), "--light", str(light),
                 "--prior", "0", "--steps", "1", "--batch", "2", "--workers", "0"]) == 0
    assert load(out).provenance["noise"]["kind"] == "recorded"


def test_train_refuses_an_arch_of_another_modality(tmp_path, capsys):
    assert main(["train", str(tmp_path / "x.pt"), "--modality", "spectral", "--arch", "imaging-unet", "--steps", "1"]) == 2
    assert "--modality imaging" in capsys.readouterr().err
    # self-supervised fine-tuning runs on the CPU: a --device for it is refused, not ignored
    assert main(["train", str(tmp_path / "y.pt"), "--self-supervised", str(tmp_path / "m.npy"), "--device", "cuda"]) == 2
    assert "runs on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()


def test_follow_motion_switch_for_denoise(tmp_path, capsys):
    """--no-follow-motion runs the shipped imaging model as a checkpoint without motion
    following would (the same weights); on a moving movie that is another output."""
    from rtdenoise.model.checkpoint import load

    rng = np.random.default_rng(0)
    scene = 5.0 + 20.0 * (rng.random((80, 80)) > 0.9)
    movie = np.stack([np.roll(scene, (t % 5, (t // 2) % 4), axis=(0, 1))[8:72, 8:72] for t in range(30)])
    movie = rng.poisson(movie).astype(np.uint16)
    np.save(tmp_path / "mov.npy", movie)
    paths = {}
    for flag in ("--follow-motion", "--no-follow-motion"):
        paths[flag] = tmp_path / f"{flag[2:]}.npy"
        assert main(["denoise", str(tmp_path / "mov.npy"), str(paths[flag]), "--quiet", flag]) == 0
    still = load("imaging-lag0").following_motion(False)
    assert not still.config.register and load("imaging-lag0").config.register
    np.testing.assert_array_equal(load_frames(paths["--no-follow-motion"]), denoise(movie, model=still))
    np.testing.assert_array_equal(load_frames(paths["--follow-motion"]), denoise(movie, model="imaging-lag0"))
    assert not np.allclose(load_frames(paths["--follow-motion"]), load_frames(paths["--no-follow-motion"]))


def test_follow_motion_refused_where_it_cannot_apply(tmp_path, capsys, model_path):
    from rtdenoise.backends import load_engine
    from rtdenoise.backends.export import export_onnx
    from rtdenoise.model.checkpoint import load

    with pytest.raises(ValueError, match="only imaging models follow motion"):
        load_engine("spectral-lag0", follow_motion=True)
    assert load_engine("spectral-lag0", follow_motion=False).config.register is False  # nothing to turn off
    onnx = export_onnx(load("imaging-lag0"), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="exported file"):
        load_engine(onnx, backend="onnxruntime", follow_motion=False)
    np.save(tmp_path / "spectra.npy", np.full((10, 152), 100, np.uint16))
    assert main(["denoise", str(tmp_path / "spectra.npy"), str(tmp_path / "o.npy"), "--quiet", "--follow-motion"]) != 0
    assert "only imaging models follow motion" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


@pytest.fixture
def movie_noise(tmp_path):
    """Recorded dark and steady-light stacks (T, H, W) of a 20 x 20 px sensor region."""
    rng = np.random.default_rng(0)
    dark, light = tmp_path / "dark.npy", tmp_path / "light.npy"
    np.save(dark, rng.normal(100.0, 3.0, (12, 20, 20)).astype(np.float32))
    np.save(light, (rng.poisson(50.0, (12, 20, 20)) + rng.normal(100.0, 3.0, (12, 20, 20))).astype(np.float32))
    return dark, light


TINY_IMAGING = ["--modality", "imaging", "--width", "4", "--steps", "1", "--batch", "1", "--window", "8",
                "--patch", "16", "16", "--workers", "0", "--threads", "1"]


def test_train_imaging_on_recorded_stacks_or_a_named_detector(tmp_path, capsys, movie_noise):
    from rtdenoise.model.checkpoint import load

    dark, light = movie_noise
    for noise, kind in ((["--dark", str(dark), "--light", str(light)], "recorded_movie"),
                        (["--light", str(light)], "recorded_movie"),
                        (["--detector", "scmos"], "scmos"), ([], "pmt")):
        out = tmp_path / f"{kind}.pt"
        assert main(["train", str(out), *TINY_IMAGING, *noise]) == 0
        assert load(out).provenance["noise"]["kind"] == kind
    pv = load(tmp_path / "recorded_movie.pt").provenance["noise"]
    assert pv["light"] == str(light) and pv["frame_shape"] == [20, 20] and "dark" not in pv  # the last: light alone
    # --init with recordings fine-tunes the model on them
    cal = tmp_path / "cal.pt"
    assert main(["train", str(cal), "--init", str(tmp_path / "scmos.pt"), "--dark", str(dark), "--light", str(light),
                 *TINY_IMAGING[4:]]) == 0
    pv = load(cal).provenance
    assert pv["noise"]["kind"] == "recorded_movie" and pv["init"]["noise"] == "scmos"


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--patch", "32", "32"], "20 × 20 px, smaller than the training patch 32 × 32", id="patch-too-big"),
        pytest.param(["--window", "30"], "12 frames, fewer than one window of 30; record longer or train on shorter "
                     "windows (--window)", id="window-too-long"),
        pytest.param(["--detector", "scmos"], "--detector scmos picks the detector model used without recordings",
                     id="detector-and-recordings"),
        pytest.param(["--prior", "0.25"], "drop --prior", id="prior"),
    ],
)
def test_train_imaging_noise_bad_arguments(tmp_path, capsys, movie_noise, args, message):
    dark, light = movie_noise
    out = tmp_path / "x.pt"
    assert main(["train", str(out), *TINY_IMAGING, "--dark", str(dark), "--light", str(light), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_detector_is_refused_for_spectra(tmp_path, capsys):
    assert main(["train", str(tmp_path / "x.pt"), "--detector", "scmos", "--steps", "1"]) == 2
    assert "--detector scmos is for movies" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "x.npz"), "--frames", "5", "--detector", "pmt"]) == 2
    assert "--detector pmt is for movies" in capsys.readouterr().err


def test_simulate_movie_metadata_says_the_noise_and_shape_used(tmp_path, capsys, movie_noise):
    dark, light = movie_noise

    def config(*args):
        out = tmp_path / "m.npz"
        assert main(["simulate", str(out), "--modality", "imaging", "--frames", "10", "--seed", "1", *args]) == 0
        arrays = load_arrays(out)
        return arrays, json.loads(arrays["config_json"].tobytes().decode())

    arrays, meta = config("--shape", "16", "12", "--dark", str(dark), "--light", str(light))
    assert meta["noise"]["kind"] == "recorded_movie" and meta["noise"]["dark"] == str(dark)
    assert meta["signal"]["shape"] == [16, 12] and arrays["noisy"].shape == (10, 16, 12)
    assert float(arrays["static"].mean()) == pytest.approx(100.0, abs=1.0)  # the dark stack's level
    _, meta = config("--shape", "16", "16", "--detector", "scmos")
    assert meta["noise"]["kind"] == "scmos" and "(scmos noise)" in capsys.readouterr().out
    _, meta = config("--shape", "24", "24")
    assert meta["noise"]["kind"] == "pmt" and meta["signal"]["shape"] == [24, 24]
    # the recordings must hold the movie: the sizes and the flag to change
    assert main(["simulate", str(tmp_path / "big.npz"), "--modality", "imaging", "--frames", "10", "--shape", "32", "32",
                 "--dark", str(dark)]) == 2
    assert "20 × 20 px, smaller than the 32 × 32 frames asked (--shape)" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "big.npz"), "--modality", "imaging", "--frames", "50", "--shape", "16", "16",
                 "--dark", str(dark)]) == 2
    assert "12 frames, fewer than the 50 asked (--frames)" in capsys.readouterr().err
    assert not (tmp_path / "big.npz").exists()


@pytest.mark.parametrize("size", [4, 8])
def test_simulate_a_movie_too_small_for_neurons(tmp_path, size):
    out = tmp_path / "m.npz"
    assert main(["simulate", str(out), "--modality", "imaging", "--frames", "5", "--shape", str(size), str(size)]) == 0
    arrays = load_arrays(out)
    assert arrays["noisy"].shape == (5, size, size) and arrays["traces"].shape == (0, 5)
    assert arrays["footprint_neuron"].shape == arrays["footprint_pixel"].shape == (0,)


def test_simulate_fs_help_tells_both_modalities(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 5 for spectra; movies: drawn from 10–90" in text


def test_sigterm_during_denoise_cleans_up_as_an_interrupt_does(tmp_path):
    """A SIGTERM (a job scheduler's, `kill`) mid-file leaves no temporary file and the old output
    untouched, and exits 143 (128 + 15) with a line saying so."""
    import signal
    import subprocess
    import sys
    import time

    np.save(tmp_path / "in.npy", np.random.default_rng(0).poisson(3.0, (1000, 64, 64)).astype(np.uint16))
    (tmp_path / "out.h5").write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-m", "rtdenoise.cli", "denoise", "in.npy", "out.h5", "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.*.tmp.h5")):  # the output is being written: mid-file
            assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "rtdenoise denoise: terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.h5"]
    assert (tmp_path / "out.h5").read_bytes() == b"old"


def test_a_reader_that_goes_away_ends_the_output_quietly():
    """`rtdenoise info M --json | head`: when the pipe's reader has gone, no traceback, exit 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "rtdenoise.cli", "info", "imaging-lag0", "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_a_warning_reads_as_the_verbs_line_not_as_source_code(tmp_path, capsys):
    from rtdenoise.synth import simulate_movie

    np.save(tmp_path / "dim.npy", simulate_movie(60, seed=4, shape=(32, 32), photons=2)["noisy"])
    assert main(["train", str(tmp_path / "m.pt"), "--self-supervised", str(tmp_path / "dim.npy"), "--window", "12",
                 "--patch", "32", "32", "--minutes", "0.05", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "rtdenoise train: warning: " in err and "too dim for photon splitting" in err
    assert "warnings.warn" not in err and "UserWarning" not in err


def test_a_model_trained_with_a_known_sensor_runs_once_given_the_lab_s_sensor(tmp_path, capsys):
    model, lab = tmp_path / "sensor.pt", tmp_path / "lab.pt"
    assert main(["train", str(model), "--sensor", "--steps", "1"]) == 2
    assert "--sensor goes with --hemoglobin" in capsys.readouterr().err and not model.exists()
    assert main(["train", str(model), "--hemoglobin", "--sensor", "--rank", "6", "--depth", "3", "--width", "8",
                 "--steps", "2", "--batch", "2", "--window", "40", "--workers", "0"]) == 0
    from rtdenoise.synth import simulate

    rec = simulate(60, seed=2, photons=2000)
    noisy = tmp_path / "noisy.npy"
    np.save(noisy, rec["noisy"])
    assert main(["denoise", str(noisy), str(tmp_path / "out.npy"), "--model", str(model), "--quiet"]) == 2
    assert "has none: give it once with `rtdenoise set-sensor" in capsys.readouterr().err
    table = tmp_path / "sensor.csv"
    sensor = rec["emission"] * rec["signature"]
    table.write_text("wavelength,em\n" + "".join(f"{w:.3f},{v:.6f}\n" for w, v in zip(rec["wavelengths"], sensor)))
    assert main(["set-sensor", str(model), str(table), "-o", str(lab)]) == 0
    assert "with the sensor of" in capsys.readouterr().out
    from rtdenoise.model.checkpoint import load

    ck = load(lab)
    np.testing.assert_allclose(ck.config.sensor, sensor, rtol=1e-4, atol=1e-6)
    assert ck.provenance["sensor"]["file"] == str(table) and load(model).config.sensor == []
    assert main(["denoise", str(noisy), str(tmp_path / "out.npy"), "--model", str(lab), "--quiet"]) == 0
    assert np.load(tmp_path / "out.npy").shape == rec["noisy"].shape
    assert main(["set-sensor", "spectral-lag0", str(table), "-o", str(tmp_path / "x.pt")]) == 2
    assert "trained without --sensor" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
