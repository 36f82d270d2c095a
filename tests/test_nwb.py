"""NWB in and out of `denoise`: a TwoPhotonSeries and a spectra TimeSeries, real files."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb", reason="pip install 'rtdenoise[nwb]'")

from rtdenoise.backends import load_engine  # noqa: E402
from rtdenoise.cli import main  # noqa: E402
from rtdenoise.io import load_frames  # noqa: E402


def _nwbfile():
    return pynwb.NWBFile(session_description="rtdenoise test", identifier="t1",
                         session_start_time=datetime(2026, 11, 25, tzinfo=timezone.utc))


def _two_photon(path, movie, *, second=None):
    f = _nwbfile()
    dev = f.create_device(name="scope")
    ch = pynwb.ophys.OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = f.create_imaging_plane(name="plane0", optical_channel=ch, description="L2/3", device=dev,
                                   excitation_lambda=920.0, indicator="GCaMP6s", location="V1", imaging_rate=30.0)
    f.add_acquisition(pynwb.ophys.TwoPhotonSeries(name="TwoPhotonSeries", data=movie, imaging_plane=plane, rate=30.0,
                                                  unit="counts"))
    if second is not None:
        f.add_acquisition(pynwb.TimeSeries(name="other", data=second, unit="V", rate=5.0))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(f)


@pytest.fixture(scope="module")
def movie():
    rng = np.random.default_rng(0)
    return rng.poisson(rng.uniform(1, 20, (1, 32, 40)), (40, 32, 40)).astype(np.uint16)


def test_denoise_a_two_photon_series_into_a_copy_with_the_denoised_series_beside_it(tmp_path, movie, capsys):
    src, dst = tmp_path / "rec.nwb", tmp_path / "rec-denoised.nwb"
    _two_photon(src, movie)
    before = src.read_bytes()
    assert main(["denoise", str(src), str(dst), "--quiet"]) == 0, capsys.readouterr().err
    assert src.read_bytes() == before  # the input is never touched
    ref = load_engine("imaging-lag0").run(movie)
    with pynwb.NWBHDF5IO(str(dst), "r") as io:
        f = io.read()
        np.testing.assert_array_equal(f.acquisition["TwoPhotonSeries"].data[:], movie)  # the original, kept
        out = f.processing["rtdenoise"]["TwoPhotonSeries_denoised"]
        assert isinstance(out, pynwb.ophys.TwoPhotonSeries) and out.imaging_plane.name == "plane0"
        assert out.rate == 30.0 and out.unit == "counts"
        assert "imaging-lag0" in out.description and "lag 0" in out.description
        np.testing.assert_allclose(out.data[:], ref, rtol=1e-5, atol=1e-4)
    # reading the denoised series back by its path
    np.testing.assert_allclose(load_frames(dst, key="processing/rtdenoise/TwoPhotonSeries_denoised"), ref,
                               rtol=1e-5, atol=1e-4)
    # and a second pass refuses to stack a second denoised series on the first
    capsys.readouterr()
    assert main(["denoise", str(dst), str(tmp_path / "again.nwb"), "--key", "TwoPhotonSeries", "--quiet"]) == 2
    assert "already holds processing/rtdenoise/TwoPhotonSeries_denoised" in capsys.readouterr().err
    assert not (tmp_path / "again.nwb").exists()


def test_spectra_time_series_with_timestamps_linked_and_out_to_npy(tmp_path, noisy_frames, capsys):
    x = noisy_frames(60)
    f = _nwbfile()
    t = np.arange(len(x)) / 5.0 + 0.013 * np.sin(np.arange(len(x)))  # irregular: timestamps, not a rate
    f.add_acquisition(pynwb.TimeSeries(name="fiber0", data=x, unit="counts", timestamps=t))
    src = tmp_path / "fp.nwb"
    with pynwb.NWBHDF5IO(str(src), "w") as io:
        io.write(f)
    assert main(["denoise", str(src), str(tmp_path / "fp-den.nwb"), "--quiet"]) == 0, capsys.readouterr().err
    assert main(["denoise", str(src), str(tmp_path / "fp-den.npy"), "--quiet"]) == 0
    ref = load_engine("spectral-lag0").run(x)
    with pynwb.NWBHDF5IO(str(tmp_path / "fp-den.nwb"), "r") as io:
        out = io.read().processing["rtdenoise"]["fiber0_denoised"]
        np.testing.assert_array_equal(out.timestamps[:], t)
        np.testing.assert_allclose(out.data[:], ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "fp-den.npy"), ref, rtol=1e-5, atol=1e-3)


def test_nwb_errors_name_the_fix(tmp_path, movie, noisy_frames, capsys):
    src = tmp_path / "two.nwb"
    _two_photon(src, movie, second=noisy_frames(10))
    assert main(["denoise", str(src), str(tmp_path / "o.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "2 series in acquisition" in err and "'TwoPhotonSeries'" in err and "--key" in err
    assert main(["denoise", str(src), str(tmp_path / "o.npy"), "--key", "nope", "--quiet"]) == 2
    assert "no series 'nope'" in capsys.readouterr().err
    np.save(tmp_path / "m.npy", movie)
    assert main(["denoise", str(tmp_path / "m.npy"), str(tmp_path / "m.nwb"), "--quiet"]) == 2
    assert "NWB output needs an NWB input" in capsys.readouterr().err
    assert main(["denoise", str(src), str(src), "--key", "other", "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
