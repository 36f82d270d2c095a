"""NWB files (Neurodata Without Borders) in and out of ``denoise``: ``pip install 'rtdenoise[nwb]'``.

Reading: a series of the file's ``acquisition`` (or ``processing/<module>/<name>``): a
``TwoPhotonSeries`` (movies, frames ``(T, H, W)``) or any ``TimeSeries`` of spectra ``(T, W)``
(fiber photometry), read a block of frames at a time. With several candidates, ``key``
names one (the error lists them).

Writing: the output is the input file plus the denoised series in a processing module
``rtdenoise``: a ``TwoPhotonSeries`` or ``OnePhotonSeries`` stays one (same imaging plane),
any other series becomes a ``TimeSeries``; unit, conversion, offset and resolution as the
original's, its timestamps linked to the original's
(or the same rate and start), the model's name, lag and provenance in its description.
The original series is untouched. The denoised frames stream into a temporary file as they
come; the NWB file appears only when complete (as every writer of :mod:`rtdenoise.io`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from rtdenoise.atomic import BlockWriter, atomic_path

__all__ = ["open_nwb", "NwbSource", "NwbWriter", "MODULE"]

MODULE = "rtdenoise"  # the processing module the denoised series go into


def _pynwb():
    try:
        import pynwb
    except ImportError as e:
        raise ImportError(f"NWB files need pynwb: pip install 'rtdenoise[nwb]' ({e})") from e
    return pynwb


def _candidates(nwbfile) -> dict[str, object]:
    """Every series a recording could be: path -> TimeSeries with (T, W) or (T, H, W) data."""
    pynwb = _pynwb()
    found = {}
    for name, obj in nwbfile.acquisition.items():
        if isinstance(obj, pynwb.TimeSeries) and getattr(obj.data, "ndim", np.ndim(obj.data)) in (2, 3):
            found[name] = obj
    for mod_name, mod in nwbfile.processing.items():
        for name, obj in mod.data_interfaces.items():
            if isinstance(obj, pynwb.TimeSeries) and getattr(obj.data, "ndim", np.ndim(obj.data)) in (2, 3):
                found[f"processing/{mod_name}/{name}"] = obj
    return found


class NwbSource:
    """One series of an open NWB file: ``shape``, ``dtype``, ``name``, ``read(a, b)`` (frames
    a..b-1), ``close()``; ``nwb`` is ``(io, nwbfile, series, key)`` for :class:`NwbWriter`."""

    def __init__(self, io, nwbfile, series, key: str, path: Path):
        self.nwb = (io, nwbfile, series, key)
        self._data = series.data
        self.shape, self.dtype = tuple(self._data.shape), np.dtype(self._data.dtype)
        self.name = f"{path}:{key}"

    def read(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self._data[a:b])

    def close(self) -> None:
        self.nwb[0].close()


def open_nwb(path: str | os.PathLike, key: str | None = None) -> NwbSource:
    """Open the series ``key`` of an NWB file (by default its only series in acquisition)."""
    pynwb = _pynwb()
    path = Path(path)
    io = pynwb.NWBHDF5IO(str(path), "r")
    try:
        nwbfile = io.read()
        found = _candidates(nwbfile)
        if key is None:
            acq = [k for k in found if not k.startswith("processing/")]
            if len(acq) != 1:
                raise ValueError(f"{path} has {len(acq)} series in acquisition ({', '.join(map(repr, acq)) or 'none'}); "
                                 f"name one with --key (candidates: {', '.join(map(repr, found)) or 'none'})")
            key = acq[0]
        if key not in found:
            raise ValueError(f"{path} has no series {key!r} of frames (T, W) or (T, H, W); "
                             f"candidates: {', '.join(map(repr, found)) or 'none'}")
        return NwbSource(io, nwbfile, found[key], key, path)
    except Exception:
        io.close()
        raise


class NwbWriter(BlockWriter):
    """Writes the denoised frames of ``source`` (a reader with an :class:`NwbSource`'s ``nwb``,
    kept open until :meth:`close`) into a copy of its file at ``path``, in the processing
    module ``rtdenoise``."""

    def __init__(self, path: str | os.PathLike, n_frames: int, frame_shape: tuple[int, ...], dtype, *,
                 source, description: str = ""):
        import h5py

        if getattr(source, "nwb", None) is None:
            raise ValueError(f"{path}: NWB output needs an NWB input (the denoised series goes into a copy of it); "
                             "write .npy, .tif or .h5 for this input")
        self.path, self.source, self.description = Path(path), source, description
        if self.path.resolve() == Path(source.name.rsplit(":", 1)[0]).resolve():
            raise ValueError(f"{path} is the input file; write the denoised copy to another path")
        self.n, self.frame_shape, self.dtype = int(n_frames), tuple(frame_shape), np.dtype(dtype)
        self.written = 0
        self._dir = tempfile.TemporaryDirectory(prefix="rtdenoise-nwb-", dir=self.path.parent)
        self._h5 = h5py.File(Path(self._dir.name) / "frames.h5", "w")
        self._ds = self._h5.create_dataset("denoised", shape=(self.n, *self.frame_shape), dtype=self.dtype,
                                           chunks=(1, *self.frame_shape) if len(self.frame_shape) == 2 else True)

    def write(self, block: np.ndarray) -> None:
        block = self._block(block)
        n = len(block)
        self._ds[self.written : self.written + n] = block
        self.written += n

    def close(self) -> None:
        try:
            self._finish()
        finally:
            self._cleanup()

    def _finish(self) -> None:
        self._all_written()
        from hdmf.data_utils import DataChunkIterator

        pynwb = _pynwb()
        io, nwbfile, src, key = self.source.nwb
        name = f"{src.name}_denoised"
        module = nwbfile.processing.get(MODULE) or nwbfile.create_processing_module(
            MODULE, "denoised recordings (rtdenoise: causal CNN denoising)")
        if name in module.data_interfaces:
            raise ValueError(f"{self.source.name.rsplit(':', 1)[0]} already holds processing/{MODULE}/{name}; "
                             "denoise the original file")
        data = DataChunkIterator(self._ds, buffer_size=max(1, min(self.n, 2**24 // max(1, self._ds[0].nbytes))))
        kw = dict(name=name, data=data, unit=src.unit, description=self.description,
                  comments=f"denoised from {key}", conversion=src.conversion, resolution=src.resolution,
                  offset=getattr(src, "offset", 0.0))
        if src.timestamps is not None:
            kw["timestamps"] = src  # linked, not copied
        else:
            kw.update(rate=src.rate, starting_time=src.starting_time)
        imaging = next((t for t in (pynwb.ophys.TwoPhotonSeries, getattr(pynwb.ophys, "OnePhotonSeries", None))
                        if t is not None and isinstance(src, t)), None)
        if imaging is not None:
            series = imaging(imaging_plane=src.imaging_plane, **kw)
        else:  # any other series of frames: its data as a TimeSeries
            series = pynwb.TimeSeries(**kw)
        module.add(series)
        with atomic_path(self.path) as tmp:
            with pynwb.NWBHDF5IO(str(tmp), "w") as out:
                out.export(src_io=io, nwbfile=nwbfile)

    def abort(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()
        self._dir.cleanup()
