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
