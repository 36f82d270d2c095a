"""Admission: may a decoded message of frames enter its stream? A pure function, no sockets.

The service's rules, beyond the wire's (:func:`rtdenoise.stream.wire.decode`), checked in
this order, so a message breaking several is counted once, by the first:

0. the sender may publish to this stream: a CURVE key limited to stream-name prefixes
   (``NAME.streams``, :mod:`rtdenoise.security`) publishes nowhere else (``stream_not_allowed``);
1. a **new** stream: its frames must have the shape the model takes (``frame_shape``;
   None where any size goes, as an image's height and width, and the model's own rules,
   ``check_shape``, pass: an image model refuses frames too small for it),
   the service must hold fewer than ``max_streams`` streams (``too_many_streams``) and its
   sender fewer than ``max_streams_per_sender`` (``too_many_sender_streams``; the sender is
   its CURVE key, else its address: one junk publisher cannot lock out the others);
   then its first message fixes the stream's shape and dtype;
2. a known stream: the same frame shape (``shape_change``) and dtype (``dtype_change``)
   as its first message;
3. the output must be sendable: ``t_ns`` plus ``(n − 1)`` frame periods (``1/fs``) must fit
   the wire's uint64 nanoseconds (``time_range``), and the output message its limits
   (``output_too_large``): float32 frames (a ``|u1`` input grows 4×) within
   ``MAX_PAYLOAD_BYTES``, the header with ``meta`` re-encoded (msgpack float32 values come
   back as float64) within ``MAX_HEADER_BYTES``;
4. the frames themselves, by the engine's own check (:meth:`Engine.check_frames
   <rtdenoise.backends.base.Engine.check_frames>`): no NaN/inf (``bad_frames``), no finite
   value beyond ±2³² counts (``value_range``: more than any detector counts, and enough to
   overflow the stream's state). This is the only validation of the frames: the engine
   then steps them with ``checked=True``.

A new stream gets its place in the table even when its first frames are then refused
(``bad_frames``), as the service counts that rejection against it.

Examples
--------
>>> import numpy as np
>>> limits = Limits(frame_shape=(4,), max_streams=1)
>>> streams = {}
>>> header = {"stream": "rig1", "seq": 0, "n": 1, "shape": [4]}
>>> a = admit(header, np.zeros((1, 4), "<u2"), streams, limits)
>>> a.accepted, a.new
(True, True)
>>> streams["rig1"] = StreamFormat((4,), np.dtype("<u2"))       # what the caller keeps
>>> admit(header, np.zeros((1, 4), "<f4"), streams, limits).reason
'dtype_change'
>>> admit({**header, "stream": "rig2"}, np.zeros((1, 4), "<u2"), streams, limits).reason
'too_many_streams'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import msgpack
import numpy as np

from rtdenoise.backends.base import ValueRangeError, check_values
from rtdenoise.stream import wire

__all__ = ["SERVICE_REASONS", "Limits", "StreamFormat", "Admission", "admit", "check_finite"]

#: Reasons the service rejects a well-formed message, beyond the wire's :data:`wire.REASONS`.
SERVICE_REASONS = (
    "frame_shape",  # first message of a stream: frames not of the shape the model takes
    "shape_change",  # frame shape differs from the stream's first message
    "dtype_change",  # dtype differs from the stream's first message
    "too_many_streams",  # a new stream beyond max_streams
    "too_many_sender_streams",  # a new stream beyond max_streams_per_sender from its sender
    "stream_not_allowed",  # a CURVE key limited to other stream names (its NAME.streams) published here
    "bad_frames",  # NaN/inf samples, or the engine refused the chunk (ValueError/TypeError)
    "value_range",  # finite samples beyond ±MAX_COUNT (2**32) counts: they would overflow the stream's state
    "time_range",  # t_ns and fs put a frame's time beyond 2**64 - 1 ns (e.g. fs=1e-300)
    "non_finite_output",  # the stream's state went non-finite: its frames since are dropped, the stream reset
    "output_too_large",  # the output message would break the wire's limits (float32 frames, re-encoded meta)
    "internal_error",  # a bug: logged with its traceback; the service keeps serving
    "stopped",  # admitted, but the service stopped before it could step them (at most _FINISH_S after the stop)
)


@dataclass(frozen=True)
class Limits:
    """What admission checks a message against (the service's config and its model)."""

    frame_shape: tuple[int | None, ...]  # one frame's shape, as the model takes it; None: any size (images)
    max_streams: int  # streams held at once
    model: str = "?"  # the model's name, for the messages
    max_header_bytes: int = wire.MAX_HEADER_BYTES  # for wire.decode
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES  # for wire.decode
    check_shape: Callable[[tuple], Any] | None = None  # the model's own rules for a new stream's frame shape
                                                       # (ValueError: e.g. images too small), Engine.check_shape
    max_streams_per_sender: int | None = None  # streams one sender may hold; None: no limit

    def decode(self, parts) -> tuple[str, dict, np.ndarray]:
        """:func:`wire.decode` of a ``frames/`` message under these limits (raises WireError)."""
        return wire.decode(parts, kind=wire.FRAMES, max_header_bytes=self.max_header_bytes,
                           max_payload_bytes=self.max_payload_bytes)


class StreamFormat(NamedTuple):
    """What a stream's first message fixed (any object with ``shape``, ``dtype`` and
    ``sender`` will do)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    sender: str | None = None  # who opened it: counted against max_streams_per_sender


class Admission(NamedTuple):
    """The verdict on one message."""

    reason: str | None  # None: accepted; else the rejection reason (SERVICE_REASONS)
    message: str  # for the log: what was received and what was expected ("" when accepted)
    new: bool  # the stream is not in the table and gets a place (also when its frames are refused)

    @property
    def accepted(self) -> bool:
        return self.reason is None


_ACCEPTED = {False: Admission(None, "", False), True: Admission(None, "", True)}  # made once: the hot path


_MAX_T_NS = 2**64 - 1
_OUTPUT_KEYS_BYTES = 128  # what the output header adds beyond the input's and the model's name (t_recv_ns, ...)


def check_finite(frames: np.ndarray) -> np.ndarray:
    """The frame check when no engine is at hand: the engine's value check
    (:func:`~rtdenoise.backends.base.check_values`: NaN/inf, values beyond ±2³² counts)."""
    check_values(frames)
    return frames


def admit(header: dict, frames: np.ndarray, streams: Mapping[str, Any], limits: Limits, *,
          check_frames: Callable[[np.ndarray], Any] = check_finite, sender: str | None = None,
          allowed: tuple[str, ...] | None = None) -> Admission:
    """Decide on a message decoded by :func:`wire.decode` (``header``, ``frames`` (n, *shape)).

    Parameters
    ----------
    streams : mapping
        The streams held so far, name -> their :class:`StreamFormat` (or anything with
        ``shape`` and ``dtype``). Only read: adding a new stream is the caller's part.
    limits : Limits
    check_frames : callable
        Validates the frames, raising ValueError/TypeError: the engine's
        :meth:`~rtdenoise.backends.base.Engine.check_frames`, called once per message.
    sender : str, optional
        Who sent it (a CURVE key's name, else the peer address), for the per-sender limit.
    allowed : tuple of str, optional
        The stream-name prefixes this sender may publish to; None: any.

    Returns
    -------
    Admission
    """
    name = header["stream"]
    if allowed is not None and not name.startswith(allowed):
        return Admission("stream_not_allowed", f"{sender} may publish only to streams starting with "
                         f"{', '.join(map(repr, allowed))}, not to {name!r}", False)
    shape, dtype = tuple(header["shape"]), frames.dtype
    known = streams.get(name)
    new = known is None
    if new:
        if len(shape) != len(limits.frame_shape) or any(w is not None and w != g for w, g in zip(limits.frame_shape, shape)):
            return Admission("frame_shape", f"frames of shape {shape}; model {limits.model!r} takes "
                             f"{tuple(limits.frame_shape)}", False)
        if limits.check_shape is not None:
            try:
                limits.check_shape(shape)
            except ValueError as e:
                return Admission("frame_shape", f"frames of shape {shape}: {e}", False)
        if len(streams) >= limits.max_streams:
            return Admission("too_many_streams", f"already {len(streams)} streams (max_streams="
                             f"{limits.max_streams})", False)
        per = limits.max_streams_per_sender
        if per is not None and sender is not None:
            mine = sum(1 for s in streams.values() if s.sender == sender)
            if mine >= per:
                return Admission("too_many_sender_streams", f"{sender} already holds {mine} streams "
                                 f"(max_streams_per_sender={per})", False)
    elif shape != known.shape:
        return Admission("shape_change", f"frames of shape {shape}, the stream started with {known.shape}", False)
    elif dtype != known.dtype:
        return Admission("dtype_change", f"dtype {dtype.str!r}, the stream started with {known.dtype.str!r}", False)
    seq, n = header["seq"], header["n"]
    fs = header.get("fs")
    if fs and header["t_ns"] + (n - 1) * 1e9 / fs > _MAX_T_NS:
        return Admission("time_range", f"t_ns {header['t_ns']} and fs {fs!r} put the last of {n} frames beyond "
                         f"{_MAX_T_NS} ns; send a smaller t_ns or a larger fs", new)
    out_bytes = frames.size * 4
    if out_bytes > wire.MAX_PAYLOAD_BYTES:
        return Admission("output_too_large", f"{n} frames give {out_bytes} bytes of float32 output, over the wire's "
                         f"{wire.MAX_PAYLOAD_BYTES}; send fewer frames per message", new)
    if "meta" in header:
        size = len(msgpack.packb(header, use_bin_type=True)) + _OUTPUT_KEYS_BYTES + len(limits.model)
        if size > wire.MAX_HEADER_BYTES:
            return Admission("output_too_large", f"the output header would be about {size} bytes with this meta, "
                             f"over the wire's {wire.MAX_HEADER_BYTES}; send less meta", new)
    try:
        check_frames(frames)
    except ValueRangeError as e:
        return Admission("value_range", f"seq {seq}..{seq + n - 1}: {e}", new)
    except (ValueError, TypeError) as e:
        # Shape and dtype are settled above: what the engine's check has left is NaN/inf, as a rule.
        what = "NaN/inf samples" if "NaN/inf" in str(e) else f"frames refused ({e})"
        return Admission("bad_frames", f"{what} in seq {seq}..{seq + n - 1}; dropped", new)
    return _ACCEPTED[new]
