"""Recordings in and out: npy, npz, TIFF, HDF5 and MAT files.

Time is always the first axis: a spectral recording is ``(T, W)``, an imaging
recording ``(T, H, W)``.

Formats and what they hold:

============  ===========  ===============================================
extension     kind         reader / writer
============  ===========  ===============================================
``.npy``      one array    numpy (never unpickles)
``.npz``      container    numpy (never unpickles; written uncompressed)
``.tif``      one array    tifffile (``pip install rtdenoise[io]``)
``.tiff``     one array    tifffile
``.h5``       container    h5py (``pip install rtdenoise[io]``); keys are
``.hdf5``                  dataset paths such as ``"noisy"`` or ``"a/b"``
``.mat``      container    scipy.io (v4-v7); v7.3 files are HDF5 and are
                           read with h5py
``.nwb``      container    pynwb (``pip install rtdenoise[nwb]``); keys are
                           series names (:mod:`rtdenoise.nwb`); written
                           only by ``denoise``, as a copy of its NWB input
============  ===========  ===============================================

Every writer is atomic: it writes a temporary file in the destination's directory and
renames it over the destination only once the write has finished (:func:`atomic_path`),
so a crash never leaves a half-written recording behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rtdenoise.atomic import atomic_path

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "atomic_path",
    "load_arrays",
    "load_frames",
    "load_spectrum",
    "save_frames",
    "validate_frames",
]

#: extension -> format name
_FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".mat": "mat",
    ".nwb": "nwb",  # rtdenoise.nwb (pynwb): read a series; written only by denoise, beside its input's
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)
_CONTAINERS = ("npz", "hdf5", "mat")
# Picked, in this order, when a container holds several arrays and no key is given.
_DEFAULT_KEYS = ("noisy", "frames", "data")
_MAT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")
_MAT_NON_NUMERIC = {"char", "struct", "cell", "object", "function_handle", "opaque", "sparse"}


# --------------------------------------------------------------------------- helpers


class _InputError(ValueError):
    """A ValueError raised by this module about the user's input; never re-wrapped."""


# Classic TIFF's offsets end at 4 GiB; the margin is for the tags of every page.
CLASSIC_TIFF_BYTES = 2**32 - 2**26


def imagej_stack(shape: tuple[int, ...], dtype) -> bool:
    """Whether frames of ``shape`` (T, H, W) go to TIFF as an ImageJ hyperstack: ImageJ's own
    opener (Fiji's default) reads it as T frames, but reads no BigTIFF, no float64 and no
    signed integers. Spectra (T, W) are one page either way."""
    dtype = np.dtype(dtype)
    return (len(shape) == 3 and dtype in (np.uint8, np.uint16, np.float32)
            and int(np.prod(shape)) * dtype.itemsize < CLASSIC_TIFF_BYTES)


def _format_of(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(os.fspath(path))
    ext = path.suffix.lower()
    if ext not in _FORMATS:
        raise _InputError(
            f"unsupported file extension {ext or '(none)'!r} in {str(path)!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return path, _FORMATS[ext]


def _existing(path: str | os.PathLike) -> tuple[Path, str]:
    path, fmt = _format_of(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such recording file", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected a file, got a directory", str(path))
    return path, fmt


def _require(module: str, what: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional package {module!r}; "
            f"install it with `pip install rtdenoise[io]`"
        ) from exc


@contextlib.contextmanager
def _reading(path: Path, fmt: str) -> Iterator[None]:
    """Turn a reader's failure on a corrupt or foreign file into a ValueError naming it."""
    try:
        yield
    except (_InputError, ImportError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # the readers raise anything from OSError to KeyError
        raise ValueError(
            f"could not read {str(path)!r} as a {fmt} file "
            f"({type(exc).__name__}: {exc}); is the file complete and of this format?"
        ) from exc


def _is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biufc"


def _quote(keys) -> str:
    return ", ".join(repr(k) for k in keys) if keys else "(none)"


# --------------------------------------------------------------------------- containers


class _Container:
    """Uniform, lazy view of an npz, HDF5 or MAT file: ordered keys, one read per key."""

    def __init__(self, keys: list[str], numeric: list[str], read, close=lambda: None, handle=None):
        self.keys = keys
        self.handle = handle  # the open file (HDF5), for reading datasets in part
        self.numeric = numeric  # keys whose arrays are numeric: candidates for the default
        self._read = read
        self.close = close

    def read(self, key: str) -> np.ndarray:
        return self._read(key)


def _open_npz(path: Path) -> _Container:
    npz = np.load(path, allow_pickle=False)
    keys = list(npz.files)
    return _Container(keys, keys, lambda k: npz[k], npz.close)


def _open_hdf5(path: Path, *, matlab: bool = False) -> _Container:
    h5py = _require("h5py", f"reading {path.suffix} files")
    f = h5py.File(path, "r")
    try:
        keys: list[str] = []
        numeric: list[str] = []

        def visit(name, obj):
            # MATLAB v7.3 keeps cell/struct payloads under '#refs#', '#subsystem#'.
            if matlab and name.split("/")[0].startswith("#"):
                return
            if isinstance(obj, h5py.Dataset):
                keys.append(name)
                if _is_numeric(obj.dtype):
                    numeric.append(name)

        f.visititems(visit)
    except BaseException:
        f.close()
        raise

    def read(key: str) -> np.ndarray:
        arr = np.asarray(f[key][()])
        # MATLAB is column-major: h5py sees a T x W MATLAB array as (W, T).
        return arr.T.copy() if matlab else arr

    return _Container(keys, numeric, read, f.close, handle=f)


def _open_mat(path: Path) -> _Container:
    import scipy.io

    try:
        info = scipy.io.whosmat(path)
    except NotImplementedError:  # v7.3: an HDF5 file with a MATLAB header
        return _open_hdf5(path, matlab=True)
    keys = [name for name, _, _ in info]
    numeric = [name for name, _, cls in info if cls not in _MAT_NON_NUMERIC]
    logical = {name for name, _, cls in info if cls == "logical"}

    def read(key: str) -> np.ndarray:
        arr = scipy.io.loadmat(path, variable_names=[key])[key]
        return arr.astype(bool) if key in logical else arr  # MAT stores logicals as uint8

    return _Container(keys, numeric, read)


def _open_container(path: Path, fmt: str) -> _Container:
    if fmt == "npz":
        return _open_npz(path)
    if fmt == "hdf5":
        return _open_hdf5(path)
    return _open_mat(path)


def _read_single(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path, allow_pickle=False)
    tifffile = _require("tifffile", "reading TIFF files")
    return tifffile.imread(path)


def _pick_key(path: Path, c: _Container, key: str | None) -> str:
    if key is not None:
        if key not in c.keys:
            raise _InputError(
                f"no array {key!r} in {str(path)!r}; available keys: {_quote(c.keys)}"
            )
        return key
    for name in _DEFAULT_KEYS:
        if name in c.keys:
            return name
    if len(c.numeric) == 1:
        return c.numeric[0]
    if not c.numeric:
        raise _InputError(f"{str(path)!r} holds no numeric arrays; keys: {_quote(c.keys)}")
    raise _InputError(
        f"{str(path)!r} holds {len(c.numeric)} arrays and none is named "
        f"{', '.join(map(repr, _DEFAULT_KEYS))}; pass key=... (--key on the command line) to pick one of: "
        f"{_quote(c.keys)}"
    )


# --------------------------------------------------------------------------- public


def load_frames(path: str | os.PathLike, *, key: str | None = None) -> np.ndarray:
    """Read a recording from a file.

    Parameters
    ----------
    path : str or path-like
        A ``.npy``, ``.npz``, ``.tif``/``.tiff``, ``.h5``/``.hdf5`` or ``.mat`` file.
    key : str, optional
        For container files (npz, HDF5, MAT): which array to read (for HDF5, a dataset
        path such as ``"group/noisy"``). By default the array named ``noisy``, else
        ``frames``, else ``data``, else the only numeric array. Not allowed for
        single-array formats (npy, TIFF).

    Returns
    -------
    numpy.ndarray
        The array as stored (time first by convention); dtype as stored. It is not
        checked: call :func:`validate_frames` before denoising.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        For an unsupported extension, an unknown or ambiguous key (the message lists
        the available keys), or a file that cannot be parsed (the message names the
        file and the reader's error).
    ImportError
        If the format needs tifffile or h5py and it is not installed.

    Notes
    -----
    MAT files store no 1-D arrays: a vector comes back as ``(1, N)``. Arrays of MATLAB
    v7.3 files are transposed on reading so that they keep the shape MATLAB shows.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "rec.npz")
    ...     save_frames(path, np.ones((10, 152)), key="noisy")
    ...     load_frames(path).shape
    (10, 152)
    """
    path, fmt = _existing(path)
    if fmt == "nwb":
        from rtdenoise.nwb import open_nwb

        src = open_nwb(path, key)
        try:
            return src.read(0, src.shape[0])
        finally:
            src.close()
    if fmt not in _CONTAINERS:
        if key is not None:
            raise _InputError(
                f"key={key!r} was given, but {fmt} files such as {str(path)!r} hold a "
                f"single array; leave key unset"
            )
        with _reading(path, fmt):
            return _read_single(path, fmt)
    with _reading(path, fmt):
        c = _open_container(path, fmt)
        try:
            return c.read(_pick_key(path, c, key))
        finally:
            c.close()


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of a file, e.g. ``noisy``, ``clean`` and ``trace`` of a test set.

    Parameters
    ----------
    path : str or path-like
        Any supported file (see :func:`load_frames`).

    Returns
    -------
    dict of str to numpy.ndarray
        Arrays by key, in file order (HDF5 keys are dataset paths). A single-array file
        (npy, TIFF) gives ``{"frames": array}``.

    Raises
    ------
    FileNotFoundError, ValueError, ImportError
        As :func:`load_frames`.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "set.npz")
    ...     save_frames(path, np.zeros((5, 8)), key="noisy", extra={"clean": np.ones((5, 8))})
    ...     sorted(load_arrays(path))
    ['clean', 'noisy']
    """
    path, fmt = _existing(path)
    if fmt not in _CONTAINERS:
        with _reading(path, fmt):
            return {"frames": _read_single(path, fmt)}
    with _reading(path, fmt):
        c = _open_container(path, fmt)
        try:
            return {k: c.read(k) for k in c.keys}
        finally:
            c.close()


def _write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    # What np.savez does, minus its keyword-argument clash (a key named "file") and with
    # pickling refused.
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _write(tmp: Path, fmt: str, arrays: dict[str, np.ndarray]) -> None:
    if fmt == "npy":
        (arr,) = arrays.values()
        with open(tmp, "wb") as f:  # a handle, so numpy adds no ".npy" of its own
            np.save(f, arr, allow_pickle=False)
    elif fmt == "npz":
        with open(tmp, "wb") as f:
            _write_npz(f, arrays)
    elif fmt == "tiff":
        tifffile = _require("tifffile", "writing TIFF files")
        (arr,) = arrays.values()
        if imagej_stack(arr.shape, arr.dtype):
            tifffile.imwrite(tmp, arr, imagej=True, metadata={"axes": "TYX"})
        else:  # minisblack: never guess RGB from a trailing axis of 3 or 4.
            tifffile.imwrite(tmp, arr, photometric="minisblack", bigtiff=arr.nbytes >= CLASSIC_TIFF_BYTES)
    elif fmt == "hdf5":
        h5py = _require("h5py", "writing HDF5 files")
        with h5py.File(tmp, "w") as f:
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr)
    else:  # mat
        import scipy.io

        with open(tmp, "wb") as f:
            scipy.io.savemat(f, arrays, do_compression=False, oned_as="row")


def save_frames(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    key: str = "denoised",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a recording to a file, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination; the extension picks the format (see :func:`load_frames`). An
        existing file is replaced only once the new one is complete.
    frames : array_like
        The recording, time first. Integer, float or bool dtype.
    key : str, default "denoised"
        Name of `frames` inside container formats (npz, HDF5, MAT); ignored for npy and
        TIFF. MAT names must start with a letter and hold letters, digits and ``_``.
    extra : mapping of str to array_like, optional
        More arrays to store beside `frames` (container formats only), e.g.
        ``{"clean": clean, "fs": np.array(5.0)}``.

    Raises
    ------
    ValueError
        Non-numeric arrays, `extra` with a single-array format, a name clash between
        `key` and `extra`, an invalid MAT name, or a writer's failure (the message
        names the file). Nothing is left at `path` or beside it in any of these cases.
    FileNotFoundError
        If the destination's directory does not exist.

    Notes
    -----
    MAT files have no float16 (stored as double) and no 1-D arrays (stored as ``(1, N)``).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "denoised.npy")
    ...     save_frames(path, np.zeros((100, 152), np.float32))
    ...     sorted(os.listdir(d))  # no temporary file left beside it
    ['denoised.npy']
    """
    path, fmt = _format_of(path)
    if fmt == "nwb":
        raise _InputError(f"{str(path)!r}: NWB files are written by `denoise` from an NWB input (the denoised "
                          "series goes into a copy of it); save these frames as .npy, .tif, .h5 or .npz")
    if not isinstance(key, str) or not key:
        raise _InputError(f"key must be a non-empty string, got {key!r}")
    extra = dict(extra or {})
    if extra and fmt not in _CONTAINERS:
        raise _InputError(
            f"extra arrays ({_quote(extra)}) need a container format (.npz, .h5, .mat); "
            f"{str(path)!r} is a single-array {fmt} file"
        )
    if key in extra:
        raise _InputError(f"extra has a key {key!r} that clashes with key={key!r}; rename one")
    arrays: dict[str, np.ndarray] = {}
    for name, value in {key: frames, **extra}.items():
        if not isinstance(name, str) or not name:
            raise _InputError(f"array names must be non-empty strings, got {name!r}")
        if fmt == "mat" and not _MAT_NAME.match(name):
            raise _InputError(
                f"{name!r} is not a valid MATLAB variable name (a letter, then up to 62 "
                f"letters, digits or '_'); pick another key"
            )
        arr = np.asarray(value)
        if not (_is_numeric(arr.dtype) and arr.dtype.kind != "c"):
            raise _InputError(
                f"{name!r} must be an integer, float or bool array to be saved, "
                f"got dtype {arr.dtype}"
            )
        arrays[name] = arr
    with atomic_path(path) as tmp:
        try:
            _write(tmp, fmt, arrays)
        except (ImportError, OSError):
            raise
        except Exception as exc:
            raise ValueError(
                f"could not write {str(path)!r} as a {fmt} file "
                f"({type(exc).__name__}: {exc}); nothing was written"
            ) from exc


def validate_frames(
    frames: np.ndarray,
    *,
    frame_shape: int | tuple[int, ...] | None = None,
    name: str = "frames",
) -> np.ndarray:
    """Check that an array is a usable recording, before any work is done on it.

    Parameters
    ----------
    frames : numpy.ndarray
        Time first: ``(T, W)`` spectra or ``(T, H, W)`` images.
    frame_shape : int or tuple of int, optional
        The shape one frame must have, e.g. a model's ``(152,)``; None in it for any size
        (an imaging model's ``(None, None)``).
    name : str, default "frames"
        What to call the array in error messages.

    Returns
    -------
    numpy.ndarray
        `frames` itself (no copy) when it is an ndarray.

    Raises
    ------
    ValueError
        Fewer than 2 dimensions, a colour movie ``(T, H, W, 3 or 4)``, no frames, empty
        frames, a non-numeric dtype, NaN or inf values (the message counts them and gives
        the first frame that has one), or frames of another shape than `frame_shape`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((50, 152), np.float32)
    >>> validate_frames(x, frame_shape=(152,)) is x
    True
    """
    arr = np.asarray(frames)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have time as the first axis, (T, W) or (T, H, W); got shape "
            f"{arr.shape}. For a single frame pass {name}[None]"
        )
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise ValueError(
            f"{name} looks like a colour (RGB) movie: shape {arr.shape[1:]} per frame, (T, H, W, {arr.shape[-1]}); "
            "the imaging models take grey frames, movies (T, H, W): convert it to grey or pick one channel "
            "(e.g. movie[..., 0])"
        )
    if arr.shape[0] < 1:
        raise ValueError(f"{name} holds no frames (shape {arr.shape}); need T >= 1")
    if 0 in arr.shape[1:]:
        raise ValueError(f"{name} has empty frames (shape {arr.shape})")
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must have an integer or float dtype, got {arr.dtype}; "
            f"convert with {name}.astype(np.float32)"
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            first = int(np.argmax(bad.reshape(arr.shape[0], -1).any(axis=1)))
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            raise ValueError(
                f"{name} has {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf); "
                f"the first is in frame {first}. Interpolate or drop those frames first"
            )
    if frame_shape is not None:
        expected = (frame_shape,) if isinstance(frame_shape, (int, np.integer)) else frame_shape
        expected = tuple(None if s is None else int(s) for s in expected)
        got = arr.shape[1:]
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            want = " × ".join("any" if e is None else str(e) for e in expected)
            kind = {1: "spectra (T, W)", 2: "a movie (T, H, W)"}
            if len(got) != len(expected) and len(got) in kind and len(expected) in kind:
                raise ValueError(
                    f"{name} is {kind[len(got)]} of frames {got}, but the model denoises {kind[len(expected)]} "
                    f"(frames {want}); pick {'a spectral' if len(got) == 1 else 'an imaging'} model (--model)"
                )
            device = "spectrometer" if len(expected) == 1 else "camera"
            raise ValueError(
                f"expected {name} of shape {expected}, got {got}; "
                f"is this the model for this {device}?"
            )
    return frames if isinstance(frames, np.ndarray) else arr


def load_spectrum(path: str | os.PathLike, wavelengths, *, column: int = -1) -> np.ndarray:
    """A spectrum from a text table, on ``wavelengths`` (nm): a sensor's emission, as FPbase and
    vendors give it.

    The file (CSV, TSV or whitespace-separated; header lines and empty cells allowed) has the
    wavelength in nm in its first column and values in the others; ``column`` picks one
    (default the last: FPbase puts emission after excitation). The values are interpolated
    linearly onto ``wavelengths``, zero outside the table's range. A ``.npy`` file holds either
    ``(N, 2+)`` such rows or one value per wavelength already.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file; no numeric rows; a table that does not cover any of ``wavelengths``; a
        spectrum that is zero there, negative or not finite.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no spectrum file {p}")
    wl = np.asarray(wavelengths, dtype=np.float64)
    if p.suffix.lower() == ".npy":
        table = np.load(p, allow_pickle=False).astype(np.float64)
        if table.ndim == 1:
            if table.shape != wl.shape:
                raise ValueError(f"{p} holds {table.size} values; the model has {wl.size} bins (or give (wavelength, "
                                 "value) rows)")
            table = np.stack([wl, table], axis=1)
    else:
        rows = []
        for line in p.read_text(errors="replace").splitlines():
            cells = [c.strip() for c in line.split(",")] if "," in line else line.split()
            try:
                rows.append([float(c) if c else np.nan for c in cells])
            except ValueError:
                continue  # a header or a comment
        width = max((len(r) for r in rows), default=0)
        if width < 2:
            raise ValueError(f"{p} has no numeric rows of (wavelength nm, value): not a spectrum table")
        table = np.array([r + [np.nan] * (width - len(r)) for r in rows])
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"{p}: expected rows of (wavelength nm, value), got an array of shape {table.shape}")
    if column == 0 or not -table.shape[1] < column < table.shape[1]:
        raise ValueError(f"{p} has {table.shape[1] - 1} value column(s) after the wavelength; column {column} is not "
                         "one of them (1, 2, ... or -1 for the last)")
    values = table[:, column]
    keep = np.isfinite(table[:, 0]) & np.isfinite(values)
    x, y = table[keep, 0], values[keep]
    if (y < 0).any():
        raise ValueError(f"{p}: a spectrum has no negative values; found {int((y < 0).sum())}")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size < 2 or x[-1] < wl.min() or x[0] > wl.max():
        raise ValueError(f"{p} covers {x[0] if x.size else float('nan'):g}-{x[-1] if x.size else float('nan'):g} nm; "
                         f"the model's bins are {wl.min():g}-{wl.max():g} nm")
    out = np.interp(wl, x, y, left=0.0, right=0.0)
    if not out.any():
        raise ValueError(f"{p}: the spectrum is zero over the model's bins ({wl.min():g}-{wl.max():g} nm)")
    return out
