"""Tests for rtdenoise.io: roundtrips, key selection, errors, atomic writes, validation."""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

from rtdenoise import io as rio
from rtdenoise.io import atomic_path, load_arrays, load_frames, save_frames, validate_frames

EXTENSIONS = [".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".mat"]
CONTAINERS = [".npz", ".h5", ".mat"]


def _frames(shape=(20, 152), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(100, 10, size=shape)
    return x.astype(dtype)


def _listing(directory):
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------- roundtrips


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize(
    "shape, dtype",
    [
        pytest.param((20, 152), np.float32, id="spectra-f32"),
        pytest.param((7, 3), np.float64, id="spectra-f64-3bins"),
        pytest.param((5, 6, 4), np.uint16, id="images-u16"),
        pytest.param((1, 152), np.int32, id="one-frame-i32"),
    ],
)
def test_roundtrip_keeps_values_shape_dtype(tmp_path, ext, shape, dtype):
    x = _frames(shape, dtype)
    path = tmp_path / f"rec{ext}"
    save_frames(path, x)
    y = load_frames(path)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)
    # nothing but the output is left in the directory
    assert _listing(tmp_path) == [f"rec{ext}"]


@pytest.mark.parametrize("ext", CONTAINERS)
def test_container_roundtrip_with_extra(tmp_path, ext):
    x = _frames()
    clean = _frames(seed=1).astype(np.float64)
    trace = np.arange(20.0)[None]  # 2-D: MAT has no 1-D arrays
    path = tmp_path / f"set{ext}"
    save_frames(path, x, key="noisy", extra={"clean": clean, "trace": trace})
    arrays = load_arrays(path)
    assert set(arrays) == {"noisy", "clean", "trace"}
    np.testing.assert_array_equal(arrays["noisy"], x)
    np.testing.assert_array_equal(arrays["clean"], clean)
    np.testing.assert_array_equal(arrays["trace"], trace)
    np.testing.assert_array_equal(load_frames(path, key="clean"), clean)


def test_mat_bool_and_vector_conventions(tmp_path):
    path = tmp_path / "m.mat"
    save_frames(path, _frames(), key="frames", extra={"mask": np.array([[True, False]]),
                                                      "vec": np.arange(4.0)})
    arrays = load_arrays(path)
    assert arrays["mask"].dtype == bool
    assert arrays["vec"].shape == (1, 4)  # documented: MAT stores vectors as rows


def test_single_array_files_load_as_frames_entry(tmp_path):
    x = _frames()
    save_frames(tmp_path / "a.npy", x)
    arrays = load_arrays(tmp_path / "a.npy")
    assert list(arrays) == ["frames"]
    np.testing.assert_array_equal(arrays["frames"], x)


def test_hdf5_nested_dataset_key(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "n.h5"
    x = _frames()
    with h5py.File(path, "w") as f:
        f.create_dataset("session1/raw", data=x)
    np.testing.assert_array_equal(load_frames(path), x)  # the only array
    np.testing.assert_array_equal(load_frames(path, key="session1/raw"), x)


def _write_matlab_v73(path, arrays):
    """A file shaped like MATLAB's v7.3 output: HDF5 with a MAT header, column-major."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=np.asarray(arr).T)
        f.create_group("#refs#").create_dataset("a", data=np.zeros(3))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


def test_mat_v73_falls_back_to_hdf5(tmp_path):
    path = tmp_path / "v73.mat"
    x = _frames((30, 152), np.float64)
    _write_matlab_v73(path, {"data": x, "other": np.ones((2, 5))})
    y = load_frames(path)
    assert y.shape == x.shape  # transposed back to MATLAB's (T, W)
    np.testing.assert_array_equal(y, x)
    assert set(load_arrays(path)) == {"data", "other"}  # '#refs#' skipped


# --------------------------------------------------------------------------- key selection


@pytest.mark.parametrize("ext", CONTAINERS)
@pytest.mark.parametrize(
    "names, expected",
    [
        (("clean", "noisy", "frames"), "noisy"),
        (("clean", "frames", "data"), "frames"),
        (("clean", "data"), "data"),
        (("whatever",), "whatever"),
    ],
)
def test_default_key_order(tmp_path, ext, names, expected):
    arrays = {n: np.full((3, 4), i, dtype=np.float64) for i, n in enumerate(names)}
    path = tmp_path / f"c{ext}"
    first, *rest = names
    save_frames(path, arrays[first], key=first, extra={n: arrays[n] for n in rest})
    np.testing.assert_array_equal(load_frames(path), arrays[expected])


@pytest.mark.parametrize("ext", CONTAINERS)
def test_ambiguous_default_lists_keys(tmp_path, ext):
    path = tmp_path / f"c{ext}"
    save_frames(path, np.zeros((3, 4)), key="alpha", extra={"beta": np.ones((3, 4))})
    with pytest.raises(ValueError, match="key=") as err:
        load_frames(path)
    assert "'alpha'" in str(err.value) and "'beta'" in str(err.value)


@pytest.mark.parametrize("ext", CONTAINERS)
def test_unknown_key_lists_keys(tmp_path, ext):
    path = tmp_path / f"c{ext}"
    save_frames(path, np.zeros((3, 4)), key="noisy", extra={"clean": np.ones((3, 4))})
    with pytest.raises(ValueError, match="no array 'nope'") as err:
        load_frames(path, key="nope")
    assert "'noisy'" in str(err.value) and "'clean'" in str(err.value)


def test_key_on_single_array_format_is_refused(tmp_path):
    save_frames(tmp_path / "a.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="single array"):
        load_frames(tmp_path / "a.npy", key="noisy")


# --------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path):
    path = tmp_path / "absent.npy"
    with pytest.raises(FileNotFoundError) as err:
        load_frames(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["rec.csv", "rec", "rec.nd2"])
def test_unknown_extension_lists_supported(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"1,2,3")
    with pytest.raises(ValueError, match="supported") as err:
        load_frames(path)
    for ext in (".npy", ".npz", ".tif", ".h5", ".mat"):
        assert ext in str(err.value)
    with pytest.raises(ValueError, match="supported"):
        save_frames(path, np.zeros((2, 2)))


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_corrupt_file_names_file(tmp_path, ext):
    path = tmp_path / f"junk{ext}"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError) as err:
        load_frames(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is not None  # the reader's own error is kept


@pytest.mark.parametrize("shape,dtype,imagej", [((6, 8, 3), np.uint16, True), ((6, 8, 9), np.float64, False),
                                                 ((6, 152), np.float32, False)])
def test_a_tiff_movie_is_an_imagej_stack_of_frames(tmp_path, shape, dtype, imagej):
    tifffile = pytest.importorskip("tifffile")
    x = _frames(shape, dtype)
    save_frames(tmp_path / "m.tif", x)
    with tifffile.TiffFile(tmp_path / "m.tif") as t:
        assert t.is_imagej == imagej
        assert not imagej or t.imagej_metadata["frames"] == shape[0]  # not 3 colour channels
    np.testing.assert_array_equal(load_frames(tmp_path / "m.tif"), x)


def test_truncated_npy(tmp_path):
    path = tmp_path / "t.npy"
    save_frames(path, _frames())
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="t.npy"):
        load_frames(path)


def test_missing_optional_dependency_names_extra(tmp_path, monkeypatch):
    save_frames(tmp_path / "a.tif", np.zeros((3, 4), np.float32))
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import now fails
    with pytest.raises(ImportError, match=r"rtdenoise\[io\]"):
        load_frames(tmp_path / "a.tif")
    with pytest.raises(ImportError, match=r"rtdenoise\[io\]"):
        save_frames(tmp_path / "b.tif", np.zeros((3, 4)))
    assert _listing(tmp_path) == ["a.tif"]


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_failed_write_leaves_nothing(tmp_path, ext, monkeypatch):
    def broken(tmp, fmt, arrays):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(rio, "_write", broken)
    with pytest.raises(ValueError, match="disk on fire"):
        save_frames(tmp_path / f"out{ext}", _frames())
    assert _listing(tmp_path) == []


def test_failed_write_keeps_previous_output(tmp_path, monkeypatch):
    path = tmp_path / "out.npz"
    old = _frames(seed=3)
    save_frames(path, old)
    monkeypatch.setattr(rio, "_write", lambda *a: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError, match="full"):
        save_frames(path, _frames(seed=4))
    assert _listing(tmp_path) == ["out.npz"]
    np.testing.assert_array_equal(load_frames(path, key="denoised"), old)


def test_real_writer_failure_leaves_nothing(tmp_path):
    # A genuine error from inside a writer: in HDF5, "a" cannot be both a dataset and
    # the group that holds "a/b".
    pytest.importorskip("h5py")
    with pytest.raises(ValueError, match="could not write"):
        save_frames(tmp_path / "x.h5", np.zeros((2, 2)), key="a", extra={"a/b": np.ones(2)})
    assert _listing(tmp_path) == []


def test_object_array_refused_before_writing(tmp_path):
    frames = np.array([[object(), object()]], dtype=object)
    for ext in (".tif", ".npy"):
        with pytest.raises(ValueError, match="dtype object"):
            save_frames(tmp_path / f"o{ext}", frames)
    assert _listing(tmp_path) == []


def test_atomic_path_success_and_failure(tmp_path):
    dest = tmp_path / "out.npz"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".") and tmp.suffix == ".npz"
        assert not dest.exists()
        np.savez(tmp, x=np.arange(3))  # numpy keeps the name: it already ends in .npz
    assert _listing(tmp_path) == ["out.npz"]
    assert np.load(dest)["x"].tolist() == [0, 1, 2]

    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "other.npy") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyError("boom")
    assert _listing(tmp_path) == ["out.npz"]


def test_atomic_path_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "no" / "such" / "dir.npy"):
            pass


def test_atomic_write_uses_normal_permissions(tmp_path):
    path = tmp_path / "p.npy"
    save_frames(path, np.zeros((2, 2)))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"extra": {"clean": np.zeros((2, 2))}}, "container"),
        ({"key": ""}, "non-empty"),
    ],
)
def test_save_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_frames(tmp_path / "a.npy", np.zeros((2, 2)), **kwargs)
    assert _listing(tmp_path) == []


def test_save_key_clash_and_bad_mat_name(tmp_path):
    with pytest.raises(ValueError, match="clashes"):
        save_frames(tmp_path / "a.npz", np.zeros(2), key="x", extra={"x": np.ones(2)})
    with pytest.raises(ValueError, match="MATLAB variable name"):
        save_frames(tmp_path / "a.mat", np.zeros(2), key="_bad")
    assert _listing(tmp_path) == []


def test_npz_key_named_file(tmp_path):
    # np.savez(file, **arrays) breaks on a key called "file"; ours does not.
    save_frames(tmp_path / "a.npz", np.arange(3), key="file")
    assert load_frames(tmp_path / "a.npz", key="file").tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- validate_frames


def test_validate_returns_same_object():
    x = _frames()
    assert validate_frames(x) is x
    assert validate_frames(x, frame_shape=(152,)) is x
    assert validate_frames(x, frame_shape=152) is x
    imgs = np.zeros((4, 8, 9), np.uint16)
    assert validate_frames(imgs, frame_shape=(8, 9)) is imgs


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_non_finite_counts_and_locates(bad):
    x = _frames()
    x[7, 3] = bad
    x[12, 0] = bad
    with pytest.raises(ValueError, match="2 non-finite values") as err:
        validate_frames(x)
    assert "frame 7" in str(err.value)


def test_validate_wrong_frame_shape_message():
    with pytest.raises(ValueError) as err:
        validate_frames(np.zeros((10, 150)), frame_shape=(152,))
    msg = str(err.value)
    assert "(152,)" in msg and "(150,)" in msg and "spectrometer" in msg


@pytest.mark.parametrize(
    "arr, match",
    [
        pytest.param(np.zeros(152), "first axis", id="1-D"),
        pytest.param(np.zeros((0, 152)), "no frames", id="T=0"),
        pytest.param(np.zeros((5, 0)), "empty frames", id="W=0"),
        pytest.param(np.zeros((5, 4), complex), "dtype", id="complex"),
        pytest.param(np.zeros((5, 4), bool), "dtype", id="bool"),
        pytest.param(np.array([["a", "b"]]), "dtype", id="str"),
    ],
)
def test_validate_rejects(arr, match):
    with pytest.raises(ValueError, match=match):
        validate_frames(arr)


def test_validate_uses_name():
    with pytest.raises(ValueError, match="^clean "):
        validate_frames(np.zeros(3), name="clean")


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(rio, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- spectra (a sensor's emission)


def test_load_spectrum_reads_fpbase_tables_and_interpolates_onto_the_bins(tmp_path):
    from rtdenoise.io import load_spectrum

    wl = np.linspace(480.0, 595.0, 152)
    grid = np.arange(400, 651)
    em = np.exp(-0.5 * ((grid - 515) / 12.0) ** 2)
    csv = tmp_path / "GRAB.csv"  # FPbase's layout: a header, excitation then emission, cells left empty
    csv.write_text("wavelength,GRAB ex,GRAB em\n" + "".join(f"{x},{'' if x > 500 else 0.5},{v:.6f}\n" for x, v in zip(grid, em)))
    got = load_spectrum(csv, wl)
    np.testing.assert_allclose(got, np.exp(-0.5 * ((wl - 515) / 12.0) ** 2), atol=2e-3)
    tsv = tmp_path / "em.txt"  # whitespace, only part of the band: zero outside it
    tsv.write_text("# nm  value\n" + "".join(f"{x}\t{v}\n" for x, v in zip(grid[100:160], em[100:160])))
    part = load_spectrum(tsv, wl)
    assert part[wl < 500].max() == 0 and part[wl > 560].max() == 0 and part.max() > 0.99
    np.testing.assert_allclose(load_spectrum(csv, wl, column=1)[wl < 500], 0.5)  # the excitation column
    per_bin = tmp_path / "bins.npy"
    np.save(per_bin, got)
    np.testing.assert_array_equal(load_spectrum(per_bin, wl), got)


@pytest.mark.parametrize("content, message", [
    (None, "no spectrum file"),
    ("name,value\nfoo,bar\n", "no numeric rows"),
    ("700,1\n710,2\n", "covers 700-710 nm; the model's bins are 480-595 nm"),
    ("500,1\n510,-2\n", "no negative values"),
    ("400,0\n700,0\n", "zero over the model's bins"),
], ids=["missing", "no-numbers", "no-overlap", "negative", "all-zero"])
def test_load_spectrum_says_what_is_wrong(tmp_path, content, message):
    from rtdenoise.io import load_spectrum

    path = tmp_path / "s.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_spectrum(path, np.linspace(480.0, 595.0, 152))


def test_load_spectrum_column_must_be_a_value_column(tmp_path):
    from rtdenoise.io import load_spectrum

    path = tmp_path / "s.csv"
    path.write_text("500,1,2\n520,2,3\n")
    for column in (0, 3, -4):
        with pytest.raises(ValueError, match="2 value column"):
            load_spectrum(path, np.linspace(480.0, 595.0, 152), column=column)
    bad = tmp_path / "short.npy"
    np.save(bad, np.ones(10))
    with pytest.raises(ValueError, match="holds 10 values; the model has 152 bins"):
        load_spectrum(bad, np.linspace(480.0, 595.0, 152))
