"""Recordings read and written a block of frames at a time, for files larger than memory.

:func:`open_frames` gives a :class:`FrameReader` (``shape``, ``dtype``, ``blocks(n)``) and
:class:`FrameWriter` writes consecutive blocks, all-or-nothing (a temporary file renamed
over the destination when it is complete, as every writer in :mod:`rtdenoise.io`).

=================  =============================================  =========================
format             reading                                        writing
=================  =============================================  =========================
``.npy``           memory-mapped                                  into a memory-mapped file
``.tif``/``.tiff`` page by page (a multi-page stack: ScanImage,   images into a memory-mapped
                   ImageJ); every page must have one shape         ImageJ stack (BigTIFF over
                                                                  4 GiB); spectra whole
``.h5``/``.hdf5``  dataset slices                                 dataset slices
``.npz``, ``.mat``  whole (these formats cannot be read in part)   whole, at the end
``.nwb``           a series' dataset slices (:mod:`rtdenoise.nwb`) into a copy of the input NWB file
=================  =============================================  =========================
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from rtdenoise.atomic import BlockWriter, atomic_path
from rtdenoise.io import _existing, _format_of, imagej_stack, load_frames, save_frames

__all__ = ["FrameReader", "FrameWriter", "frame_writer", "open_frames"]


class FrameReader:
    """Frames of a recording file, time first; read in blocks with :meth:`blocks`."""

    nwb = None  # an NWB file's (io, nwbfile, series, key), for writing the denoised copy beside it

    def __init__(self, read, shape: tuple[int, ...], dtype: np.dtype, close=None, name: str = ""):
        self._read, self.shape, self.dtype, self._close, self.name = read, tuple(shape), np.dtype(dtype), close, name

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as an array in memory."""
        return np.asarray(self._read(start, min(stop, len(self))))

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``size`` frames (the last may be shorter)."""
        for start in range(0, len(self), size):
            yield self.read(start, start + size)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_frames(path: str | os.PathLike, *, key: str | None = None) -> FrameReader:
    """A :class:`FrameReader` for a recording file (see the module's table).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is not a
    recording (too few dimensions, a TIFF whose pages differ in shape, ...).
    """
    path, fmt = _existing(path)
    name = str(path)
    if fmt == "npy":
        arr = _memmap_npy(path)
        reader = FrameReader(lambda a, b: arr[a:b], arr.shape, arr.dtype, name=name)
    elif fmt == "tiff":
        reader = _tiff_reader(path)
    elif fmt == "hdf5":
        reader = _hdf5_reader(path, key)
    elif fmt == "nwb":
        from rtdenoise.nwb import open_nwb

        src = open_nwb(path, key)
        reader = FrameReader(src.read, src.shape, src.dtype, close=src.close, name=src.name)
        reader.nwb = src.nwb  # for an NWB output: the file and series to copy
    else:  # npz, mat: whole
        arr = load_frames(path, key=key)
        reader = FrameReader(lambda a, b: arr[a:b], arr.shape, arr.dtype, name=name)
    if len(reader.shape) < 2 or reader.shape[0] < 1:
        reader.close()
        raise ValueError(f"{name} holds an array of shape {reader.shape}; a recording is time first, (T, W) or (T, H, W)")
    return reader


def _memmap_npy(path: Path) -> np.ndarray:
    """An ``.npy`` memory-mapped; one of Python objects (never unpickled) is refused by name."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        dtype = _npy_dtype(path)
        if dtype is not None and dtype.hasobject:
            raise ValueError(f"{path} holds Python objects (dtype {dtype}), not numbers; a recording is a numeric "
                             "array, integer or float counts: save it with arr.astype(np.float32)") from e
        raise ValueError(f"could not read {path} as a npy file ({e}); is the file complete and of this format?") from e


def _npy_dtype(path: Path) -> np.dtype | None:
    """The dtype an ``.npy`` header declares, None if the header cannot be read."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return read(f)[2]
    except Exception:  # noqa: BLE001 (a header that does not parse: the caller's own error stands)
        return None


def _tiff_reader(path: Path) -> FrameReader:
    try:
        import tifffile
    except ImportError as e:
        raise ImportError(f"reading TIFF needs tifffile: pip install 'rtdenoise[io]' ({e})") from e
    tif = tifffile.TiffFile(path)
    try:
        _refuse_channels(tif, path)
        pages = tif.pages
        first = pages.first if hasattr(pages, "first") else pages[0]
        shapes = {tuple(p.shape) for p in pages}
        dtypes = {np.dtype(p.dtype) for p in pages}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise ValueError(
                f"{path} is a TIFF whose pages differ: shapes {sorted(shapes)}, dtypes {sorted(map(str, dtypes))}; "
                "one movie has one frame shape and type: split it into one file per acquisition"
            )
        if len(pages) > 1 and len(first.shape) == 2:  # a stack of 2-D pages: one frame each, read page by page
            reader = FrameReader(lambda a, b: tif.asarray(key=range(a, b)).reshape(b - a, *first.shape),
                                 (len(pages), *first.shape), first.dtype, close=tif.close, name=str(path))
        else:  # one page holding the whole recording ((T, W) spectra, as load_frames reads it)
            arr = tif.asarray()
            reader = FrameReader(lambda a, b: arr[a:b], arr.shape, arr.dtype, close=tif.close, name=str(path))
    except Exception:
        tif.close()
        raise
    return reader


def _refuse_channels(tif, path: Path) -> None:
    """A TIFF of colour samples or of several channels is refused: read page by page, its
    channels would be taken for consecutive frames of one movie (or a colour frame's rows for
    spectra). Channels are seen in the series' axes (tifffile's ``C``; ``S`` for colour
    samples), ImageJ's ``channels`` and ScanImage's ``SI.hChannels.channelSave`` (ScanImage
    BigTIFF v3/v4; older ScanImage files keep it in each page's description, not read here)."""
    import tifffile

    first = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    series = tif.series[0] if tif.series else None
    axes, shape = (series.axes, tuple(series.shape)) if series is not None else (first.axes, tuple(first.shape))
    size = dict(zip(axes, shape))
    if size.get("S", 1) > 1 or first.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR):
        raise ValueError(f"{path} is a colour (RGB) TIFF (axes {axes}, shape {shape}); the imaging models take grey "
                         "frames, (T, H, W): save one colour channel, or a grey conversion, to its own file")
    channels = max(size.get("C", 1), int((tif.imagej_metadata or {}).get("channels", 1)))
    if tif.is_scanimage:
        saved = ((tif.scanimage_metadata or {}).get("FrameData") or {}).get("SI.hChannels.channelSave", 1)
        channels = max(channels, len(saved) if isinstance(saved, (list, tuple)) else 1)
    if channels > 1:
        raise ValueError(f"{path} holds {channels} channels (axes {axes}, shape {shape}), which its pages interleave; "
                         "rtdenoise denoises one channel, (T, H, W): save each channel to its own file (e.g. Fiji's "
                         "Image > Color > Split Channels) and denoise each")


def _hdf5_reader(path: Path, key: str | None) -> FrameReader:
    from rtdenoise.io import _open_container, _pick_key

    c = _open_container(path, "hdf5")
    try:
        name = _pick_key(path, c, key)
        ds = c.handle[name]
    except Exception:
        c.close()
        raise
    return FrameReader(lambda a, b: ds[a:b], ds.shape, ds.dtype, close=c.close, name=f"{path}:{name}")


def frame_writer(path: str | os.PathLike, n_frames: int, frame_shape: tuple[int, ...], dtype, *,
                 key: str = "denoised", source: FrameReader | None = None, description: str = ""):
    """A :class:`FrameWriter`, or for an ``.nwb`` destination an :class:`~rtdenoise.nwb.NwbWriter`
    (the denoised series of ``source``, an NWB reader, into a copy of its file)."""
    if _format_of(path)[1] == "nwb":
        from rtdenoise.nwb import NwbWriter

        return NwbWriter(path, n_frames, frame_shape, dtype, source=source, description=description)
    return FrameWriter(path, n_frames, frame_shape, dtype, key=key)


def _tiff_memmap(path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A TIFF stack of ``shape`` (T, H, W), a page per frame, mapped to be filled in place:
    an ImageJ hyperstack where ImageJ can hold it, else BigTIFF (:func:`~rtdenoise.io.imagej_stack`)."""
    import tifffile

    if imagej_stack(shape, dtype):
        return tifffile.memmap(path, shape=shape, dtype=dtype, imagej=True, metadata={"axes": "TYX"})
    return tifffile.memmap(path, shape=shape, dtype=dtype, bigtiff=True)


class FrameWriter(BlockWriter):
    """Writes a recording of ``n_frames`` frames of ``frame_shape`` and ``dtype`` block by
    block; the file appears at ``path`` only when :meth:`close` runs after every frame was
    written (a context manager closes it; an exception inside discards it)."""

    def __init__(self, path: str | os.PathLike, n_frames: int, frame_shape: tuple[int, ...], dtype, *,
                 key: str = "denoised"):
        self.path, fmt = _format_of(path)
        self.fmt, self.n, self.frame_shape, self.dtype, self.key = fmt, int(n_frames), tuple(frame_shape), np.dtype(dtype), key
        self.written = 0
        # Written as they come: npy, HDF5, and TIFF stacks of images (a page per frame); spectra
        # into a TIFF are one page, so they are gathered like npz and mat.
        self.streamed = fmt in ("npy", "hdf5") or (fmt == "tiff" and len(self.frame_shape) == 2)
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path)) if self.streamed else None
        shape = (self.n, *self.frame_shape)
        if not self.streamed:
            self._out = np.empty(shape, dtype=self.dtype)
        elif fmt == "npy":
            self._out = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=self.dtype, shape=shape)
        elif fmt == "tiff":
            self._out = _tiff_memmap(self._tmp, shape, self.dtype)
        elif fmt == "hdf5":
            import h5py

            f = self._stack.enter_context(h5py.File(self._tmp, "w"))
            self._out = f.create_dataset(key, shape=shape, dtype=self.dtype)

    def write(self, block: np.ndarray) -> None:
        """The next ``len(block)`` frames."""
        block = self._block(block)
        n = len(block)
        self._out[self.written : self.written + n] = block
        self.written += n

    def close(self) -> None:
        """Finish the file; it replaces ``path`` only if every frame was written."""
        self._all_written()
        if not self.streamed:
            save_frames(self.path, self._out, key=self.key)
        elif self.fmt in ("npy", "tiff"):
            self._out.flush()
            del self._out
        self._stack.close()  # closes the writer, then renames the temporary file over path

    def abort(self) -> None:
        """Discard what was written; ``path`` is left as it was."""
        self._out = None
        with contextlib.suppress(Exception):
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
