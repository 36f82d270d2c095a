"""Files through the engine a block at a time: the same frames as one pass, bounded memory,
all-or-nothing outputs, and the input's own dtype on request."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from rtdenoise.backends import load_engine
from rtdenoise.blocks import FrameWriter, open_frames
from rtdenoise.cli import main
from rtdenoise.denoise import denoise_file
from rtdenoise.io import load_frames
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig

tifffile = pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=2, floor=1.0, horizon=20)
    torch.manual_seed(0)
    net = cfg.build()
    with torch.no_grad():
        net.out.conv.weight.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("m") / "img.pt"
    Checkpoint("tiny-img", cfg, net.state_dict(), fs=30.0).save(path)
    return path


@pytest.fixture(scope="module")
def movie():
    rng = np.random.default_rng(1)
    return rng.poisson(rng.uniform(1, 30, (1, 36, 44)), (50, 36, 44)).astype(np.uint16)


@pytest.mark.parametrize("ext", ["tif", "npy", "h5", "npz"])
def test_a_file_in_blocks_equals_one_pass(tmp_path, model_path, movie, ext):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, movie)  # a multi-page stack, as ScanImage and ImageJ write them
    with open_frames(src) as r:
        assert (r.shape, r.dtype) == (movie.shape, np.uint16)
        np.testing.assert_array_equal(np.concatenate(list(r.blocks(7))), movie)
    dst = tmp_path / f"out.{ext}"
    s = denoise_file(src, dst, model=model_path, chunk=7, progress=False)
    ref = load_engine(model_path).run(movie)
    assert s["frames"] == 50 and s["dtype"] == "float32"
    np.testing.assert_allclose(load_frames(dst), ref, rtol=0, atol=1e-4 * float(ref.std()))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tif", dst.name])  # no temporary left


def test_input_dtype_is_rounded_and_clipped(tmp_path, model_path, movie):
    np.save(tmp_path / "in.npy", movie)
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--model", str(model_path),
                 "--dtype", "input", "--quiet"]) == 0
    out = np.load(tmp_path / "out.npy")
    ref = load_engine(model_path).run(movie)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.clip(np.rint(ref), 0, 65535).astype(np.uint16))


def test_memory_does_not_grow_with_the_file(tmp_path, model_path):
    def peak(frames: int) -> int:
        movie = np.random.default_rng(2).poisson(10, (frames, 64, 64)).astype(np.float32)
        np.save(tmp_path / "in.npy", movie)
        tracemalloc.start()
        denoise_file(tmp_path / "in.npy", tmp_path / "out.npy", model=model_path, chunk=8, progress=False)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert np.load(tmp_path / "out.npy", mmap_mode="r").shape == movie.shape
        return top

    peak(16)  # imports and the model's first load out of the way
    short, long = peak(60), peak(600)  # 1 MB and 9.8 MB of movie
    assert long < 1.3 * short, f"peak {long / 1e6:.2f} MB for 600 frames against {short / 1e6:.2f} MB for 60"


def test_a_tiff_of_mixed_pages_is_refused_and_nothing_is_written(tmp_path, model_path, movie):
    src = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(src) as w:
        w.write(movie[0])
        w.write(movie[1, :20, :20])
    with pytest.raises(ValueError, match=r"pages differ: shapes \[\(20, 20\), \(36, 44\)\]"):
        denoise_file(src, tmp_path / "out.tif", model=model_path, progress=False)
    assert not (tmp_path / "out.tif").exists()


def test_a_bad_block_late_in_the_file_leaves_nothing_half_written(tmp_path, model_path, movie):
    bad = movie.astype(np.float32)
    bad[40, 3, 3] = np.nan
    np.save(tmp_path / "in.npy", bad)
    (tmp_path / "out.npy").write_bytes(b"old")
    with pytest.raises(ValueError, match="NaN"):
        denoise_file(tmp_path / "in.npy", tmp_path / "out.npy", model=model_path, chunk=8, progress=False)
    assert (tmp_path / "out.npy").read_bytes() == b"old"  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]


def test_a_writer_refuses_to_save_a_short_recording(tmp_path):
    w = FrameWriter(tmp_path / "x.npy", 4, (8,), np.float32)
    w.write(np.zeros((3, 8)))
    with pytest.raises(RuntimeError, match="3 of 4 frames"):
        w.close()
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_denoised_tiff_stack_opens_in_imagej_as_frames(tmp_path, model_path, movie):
    """ImageJ's own opener reads a classic TIFF with ImageJ's description as T frames; a
    BigTIFF it cannot open, and pages without the description it shows as slices."""
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, movie)
    assert main(["denoise", str(src), str(tmp_path / "out.tif"), "--model", str(model_path),
                 "--dtype", "input", "--quiet"]) == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as t:
        assert t.is_imagej and not t.is_bigtiff
        assert (t.imagej_metadata["frames"], t.series[0].axes) == (50, "TYX")
        out = t.asarray()
    assert out.dtype == np.uint16 and out.shape == movie.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_tiff_imagej_cannot_hold_is_bigtiff(tmp_path, monkeypatch, dtype):
    import rtdenoise.io

    if dtype == np.float32:  # pretend the stack is over classic TIFF's 4 GiB
        monkeypatch.setattr(rtdenoise.io, "CLASSIC_TIFF_BYTES", 100)
    data = np.arange(5 * 6 * 7, dtype=dtype).reshape(5, 6, 7)
    w = FrameWriter(tmp_path / "x.tif", 5, (6, 7), dtype)
    w.write(data[:2])
    w.write(data[2:])
    w.close()
    with tifffile.TiffFile(tmp_path / "x.tif") as t:
        assert t.is_bigtiff and not t.is_imagej
        np.testing.assert_array_equal(t.asarray(), data)
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def _refused(tmp_path, capsys, src, *message):
    """``denoise src`` exits 2 naming ``src`` and saying ``message``; nothing is written."""
    assert main(["denoise", str(src), str(tmp_path / "out.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and all(m in err for m in message), err
    assert not (tmp_path / "out.npy").exists()


def test_a_multichannel_tiff_is_refused_not_interleaved(tmp_path, capsys, movie):
    hyper = tmp_path / "hyper.tif"  # 40 time points x 2 channels: 80 pages, channels alternating
    tifffile.imwrite(hyper, np.stack([movie[:40], movie[10:]], axis=1), imagej=True, metadata={"axes": "TCYX"})
    _refused(tmp_path, capsys, hyper, "2 channels", "TCYX", "(40, 2, 36, 44)", "its own file")
    shaped = tmp_path / "shaped.tif"  # tifffile's own metadata: a C axis
    tifffile.imwrite(shaped, np.stack([movie[:10], movie[10:20]], axis=1), metadata={"axes": "TCYX"})
    _refused(tmp_path, capsys, shaped, "2 channels")


def test_a_scanimage_tiff_of_two_saved_channels_is_refused(tmp_path, capsys, movie, monkeypatch):
    src = tmp_path / "si.tif"  # 5 pages: two channels do not split them evenly, so tifffile's series shows none
    tifffile.imwrite(src, movie[:5], software="SI.2023.0.0")
    for saved, ok in (([1, 2], False), (1, True), ([2], True)):
        monkeypatch.setattr(tifffile.TiffFile, "scanimage_metadata",
                            property(lambda self, s=saved: {"FrameData": {"SI.hChannels.channelSave": s}}))
        if ok:
            with open_frames(src) as r:
                assert r.shape == (5, 36, 44)
        else:
            _refused(tmp_path, capsys, src, "2 channels")


def test_colour_recordings_are_refused_by_name(tmp_path, capsys, movie):
    rgb = np.stack([movie[:10]] * 3, axis=-1).astype(np.uint8)  # (10, 36, 44, 3)
    tifffile.imwrite(tmp_path / "frame.tif", rgb[0])  # one colour frame, not frames of 44 x 3 px
    _refused(tmp_path, capsys, tmp_path / "frame.tif", "colour (RGB) TIFF", "(36, 44, 3)", "grey")
    tifffile.imwrite(tmp_path / "stack.tif", rgb)
    _refused(tmp_path, capsys, tmp_path / "stack.tif", "colour (RGB) TIFF", "(10, 36, 44, 3)")
    np.save(tmp_path / "rgb.npy", rgb.astype(np.float32))
    _refused(tmp_path, capsys, tmp_path / "rgb.npy", "colour (RGB) movie", "(36, 44, 3)", "(T, H, W)", "one channel")
    assert main(["denoise", str(tmp_path / "rgb.npy"), str(tmp_path / "out.npy"), "--model", "imaging-lag0"]) == 2
    assert "colour (RGB) movie" in capsys.readouterr().err  # with a model named too


def test_an_object_npy_is_refused_by_name(tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    _refused(tmp_path, capsys, tmp_path / "obj.npy", "Python objects", "numeric")


def test_nan_late_in_a_file_is_placed_in_the_whole_file(tmp_path, capsys, model_path):
    bad = np.random.default_rng(0).poisson(3.0, (60, 16, 16)).astype(np.float32)
    bad[55, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert main(["denoise", str(tmp_path / "nan.npy"), str(tmp_path / "out.npy"), "--model", str(model_path),
                 "--chunk", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nan.npy contains NaN/inf values, the first in frame 55 " in err and "drop those frames" in err
    assert not (tmp_path / "out.npy").exists()


def test_denoising_a_file_onto_itself_is_refused(tmp_path, capsys, model_path, movie):
    src = tmp_path / "m.npy"
    np.save(src, movie)
    (tmp_path / "link.npy").symlink_to(src)
    for dst in (src, tmp_path / "." / "m.npy", tmp_path / "sub" / ".." / "m.npy", tmp_path / "link.npy"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(["denoise", str(src), str(dst), "--model", str(model_path), "--quiet"]) == 2
        assert "is the input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(src), movie)
