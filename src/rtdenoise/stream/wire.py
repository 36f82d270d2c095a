"""Wire protocol v1: pure encode/decode of frame messages, no sockets.

A message is a ZeroMQ multipart message of exactly three parts::

    [topic, header, payload]

- ``topic``: UTF-8 ``frames/<stream>`` (raw input) or ``denoised/<stream>`` (output);
- ``header``: a msgpack map with string keys (see :data:`REQUIRED_KEYS`,
  :data:`OPTIONAL_KEYS`, :data:`OUTPUT_KEYS`);
- ``payload``: the frames as raw C-order bytes, ``n * prod(shape) * itemsize`` long.

The header is a plain ``dict``; :func:`validate_header` checks one and returns a new
dict. Every rule broken raises :class:`WireError`, whose ``.reason`` is one of
:data:`REASONS` so a service can count rejections by reason. The full specification,
for publishers written in other languages, is ``docs/protocol.md``. Nothing here
pickles, ever.

Examples
--------
>>> import numpy as np
>>> frames = np.arange(8, dtype="<u2").reshape(2, 4)          # n=2 spectra of 4 bins
>>> parts = encode_frames("rig1", frames, seq=10, t_ns=0)
>>> topic, header, out = decode(parts)
>>> topic, header["seq"], header["n"], header["shape"], header["dtype"]
('frames/rig1', 10, 2, [4], '<u2')
>>> bool((out == frames).all())
True
"""

from __future__ import annotations

import math
import operator
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "PROTOCOL_VERSION",
    "FRAMES",
    "DENOISED",
    "KINDS",
    "REASONS",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "OUTPUT_KEYS",
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_STREAM_CHARS",
    "WireError",
    "topic_for",
    "validate_stream_name",
    "validate_header",
    "encode",
    "encode_frames",
    "encode_denoised",
    "decode",
]

PROTOCOL_VERSION = 1

FRAMES = "frames"  # topic kind of raw input frames
DENOISED = "denoised"  # topic kind of the service's output frames
KINDS = (FRAMES, DENOISED)

#: Every value :attr:`WireError.reason` can take; stable, for counters and logs.
REASONS = (
    "parts",  # not exactly 3 parts, or a part is not a bytes-like buffer
    "topic",  # topic not UTF-8 ``<kind>/<stream>``, or its stream != header's
    "header_msgpack",  # header part is not valid msgpack (or is empty)
    "header_type",  # header is not a map with string keys
    "header_missing",  # a required key is absent
    "header_extra",  # an unknown key is present
    "header_value",  # a key has the wrong type or an out-of-range value
    "version",  # ``v`` is not PROTOCOL_VERSION
    "dtype",  # dtype string not one of DTYPES
    "shape",  # shape not a list of 1 to 3 ints >= 1
    "payload_size",  # payload length != n * prod(shape) * itemsize
    "too_large",  # header or payload over its size limit
)

#: Keys every header carries.
REQUIRED_KEYS = ("v", "stream", "seq", "n", "shape", "dtype", "t_ns")
#: Keys a header may carry.
OPTIONAL_KEYS = ("fs", "meta")
#: Keys every ``denoised/`` header carries in addition (and ``frames/`` headers never do).
OUTPUT_KEYS = ("t_recv_ns", "t_pub_ns", "lag", "model", "gap", "warm", "epoch")

# Numeric dtypes only. Multi-byte types need an explicit byte order ('<' or '>') so the
# payload means the same on every machine; single-byte types may omit it.
_MULTI_BYTE = ("u2", "i2", "u4", "i4", "f4", "f8")
_SINGLE_BYTE = ("u1", "i1")
DTYPES = frozenset(
    [o + t for t in _MULTI_BYTE for o in "<>"]
    + [o + t for t in _SINGLE_BYTE for o in ("|", "<", ">", "")]
)

MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
MAX_STREAM_CHARS = 128
MAX_MODEL_CHARS = 1024
MAX_FRAME_DIMS = 3
_MAX_TOPIC_BYTES = len(DENOISED) + 1 + 4 * MAX_STREAM_CHARS


class WireError(ValueError):
    """A message that breaks wire protocol v1.

    Attributes
    ----------
    reason : str
        Short, stable, machine-readable cause; one of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(f"[{reason}] {message}")
        self.reason = reason


def _show(x: Any, limit: int = 80) -> str:
    """``repr`` of a received value, cut short so errors stay readable."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(x: Any) -> bool:
    # bool is an int subclass in Python and msgpack has a distinct bool type: reject it.
    return isinstance(x, int) and not isinstance(x, bool)


def topic_for(kind: str, stream: str | None = None) -> bytes:
    """Topic bytes ``<kind>/<stream>``, or the prefix ``<kind>/`` when stream is None.

    >>> topic_for("denoised", "rig1"), topic_for("frames")
    (b'denoised/rig1', b'frames/')
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {_show(kind)}")
    if stream is None:
        return f"{kind}/".encode()
    validate_stream_name(stream)
    return f"{kind}/{stream}".encode()


def validate_stream_name(stream: Any) -> str:
    """Check a stream name: a str of 1 to 128 printable characters. Returns it."""
    if not isinstance(stream, str):
        raise WireError(
            "header_value", f"stream must be a str, got {type(stream).__name__} {_show(stream)}"
        )
    if not 1 <= len(stream) <= MAX_STREAM_CHARS or not stream.isprintable():
        raise WireError(
            "header_value",
            f"stream must be 1 to {MAX_STREAM_CHARS} printable characters, "
            f"got {len(stream)} characters {_show(stream)}",
        )
    return stream


def _check_int(h: dict, key: str, minimum: int | None = None) -> None:
    x = h[key]
    if not _is_int(x):
        raise WireError("header_value", f"{key} must be an int, got {type(x).__name__} {_show(x)}")
    if minimum is not None and x < minimum:
        raise WireError("header_value", f"{key} must be >= {minimum}, got {x}")


def validate_header(h: Any, *, kind: str = FRAMES) -> dict:
    """Check a decoded header against protocol v1 and return it as a new dict.

    Parameters
    ----------
    h : dict
        The header as msgpack decodes it.
    kind : {"frames", "denoised"}
        ``"denoised"`` headers must also carry every key of :data:`OUTPUT_KEYS`;
        ``"frames"`` headers must carry none of them.

    Raises
    ------
    WireError
        With ``.reason`` ``header_type``, ``header_missing``, ``version``,
        ``header_extra``, ``header_value``, ``dtype`` or ``shape``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {_show(kind)}")
    if not isinstance(h, dict):
        raise WireError("header_type", f"header must be a map, got {type(h).__name__} {_show(h)}")
    bad_keys = [k for k in h if not isinstance(k, str)]
    if bad_keys:
        raise WireError("header_type", f"header keys must be strings, got {_show(bad_keys)}")

    # The version first: a later version may change every other rule.
    if "v" not in h:
        raise WireError("header_missing", f"header has no 'v' (protocol version); keys: {sorted(h)}")
    if not _is_int(h["v"]) or h["v"] != PROTOCOL_VERSION:
        raise WireError(
            "version", f"protocol version {_show(h['v'])} is not supported; this reader speaks v1"
        )

    required = REQUIRED_KEYS + (OUTPUT_KEYS if kind == DENOISED else ())
    missing = [k for k in required if k not in h]
    if missing:
        raise WireError("header_missing", f"{kind} header is missing {missing}; got keys {sorted(h)}")
    allowed = set(required) | set(OPTIONAL_KEYS)
    extra = sorted(k for k in h if k not in allowed)
    if extra:
        hint = ""
        if kind == FRAMES and set(extra) & set(OUTPUT_KEYS):
            hint = " (output keys belong on denoised/ topics only)"
        raise WireError("header_extra", f"unknown header keys {extra}{hint}; allowed: {sorted(allowed)}")

    validate_stream_name(h["stream"])
    _check_int(h, "seq", 0)
    _check_int(h, "n", 1)
    _check_int(h, "t_ns")

    shape = h["shape"]
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_FRAME_DIMS
        or not all(_is_int(d) and d >= 1 for d in shape)
    ):
        raise WireError(
            "shape",
            f"shape must be a list of 1 to {MAX_FRAME_DIMS} ints >= 1 (one frame's shape), "
            f"got {_show(shape)}",
        )
    dtype = h["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(
            "dtype",
            f"dtype must be a numeric numpy dtype string with byte order "
            f"(e.g. '<u2', '<f4', '|u1'), got {_show(dtype)}; accepted: {sorted(DTYPES)}",
        )

    if "fs" in h:
        fs = h["fs"]
        if not (_is_int(fs) or isinstance(fs, float)) or not (math.isfinite(fs) and fs > 0):
            raise WireError("header_value", f"fs must be a finite number > 0 (Hz), got {_show(fs)}")
    if "meta" in h and not isinstance(h["meta"], dict):
        raise WireError(
            "header_value", f"meta must be a map, got {type(h['meta']).__name__} {_show(h['meta'])}"
        )

    if kind == DENOISED:
        _check_int(h, "t_recv_ns")
        _check_int(h, "t_pub_ns")
        _check_int(h, "lag", 0)
        _check_int(h, "gap", 0)
        _check_int(h, "epoch", 0)
        if not isinstance(h["warm"], bool):
            raise WireError("header_value", f"warm must be a bool, got {_show(h['warm'])}")
        model = h["model"]
        if not isinstance(model, str) or len(model) > MAX_MODEL_CHARS:
            raise WireError(
                "header_value", f"model must be a str of at most {MAX_MODEL_CHARS} chars, got {_show(model)}"
            )
    return dict(h)


# ----------------------------------------------------------------------------- encode


def _frames_array(frames: Any) -> np.ndarray:
    """``frames`` as a C-contiguous array (n, *shape); copies only when not contiguous."""
    arr = np.asarray(frames)
    if not 2 <= arr.ndim <= MAX_FRAME_DIMS + 1:
        raise WireError(
            "shape",
            f"frames must have shape (n, *frame_shape) with 1 to {MAX_FRAME_DIMS} frame dims, "
            f"got shape {arr.shape}; add a leading axis for a single frame (frames[None])",
        )
    if 0 in arr.shape:
        raise WireError("shape", f"frames must not be empty, got shape {arr.shape}")
    if arr.dtype.str not in DTYPES:
        raise WireError(
            "dtype", f"frames dtype {arr.dtype} ({arr.dtype.str!r}) is not one of {sorted(DTYPES)}"
        )
    return np.ascontiguousarray(arr)


def _pack_header(header: dict, kind: str) -> bytes:
    h = validate_header(header, kind=kind)
    try:
        packed = msgpack.packb(h, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError("header_value", f"header is not msgpack-serializable: {e}") from None
    if len(packed) > MAX_HEADER_BYTES:
        raise WireError("too_large", f"header is {len(packed)} bytes, limit {MAX_HEADER_BYTES}")
    # What we send must decode: catches e.g. non-str keys inside meta.
    _unpack_header(packed)
    return packed


def encode(kind: str, header: dict, frames: Any) -> list:
    """Encode one message: ``[topic, header, payload]``.

    Parameters
    ----------
    kind : {"frames", "denoised"}
    header : dict
        Every header key except ``v``, ``n``, ``shape`` and ``dtype``, which are derived
        from ``frames`` (and replace any given).
    frames : array_like, shape (n, *frame_shape)
        1 to 3 frame dims, a numeric dtype of :data:`DTYPES`.

    Returns
    -------
    list
        ``[topic bytes, header msgpack bytes, payload memoryview]``. The payload is a
        view of ``frames`` (no copy) when it is C-contiguous: send it before changing
        ``frames`` in place.
    """
    arr = _frames_array(frames)
    h = dict(header)
    h.update(v=PROTOCOL_VERSION, n=int(arr.shape[0]), shape=[int(d) for d in arr.shape[1:]],
             dtype=arr.dtype.str)
    # Canonical key order (readable hex dumps); unknown keys stay and fail validation.
    order = REQUIRED_KEYS + OPTIONAL_KEYS + OUTPUT_KEYS
    h = {k: h[k] for k in order if k in h} | {k: v for k, v in h.items() if k not in order}
    packed = _pack_header(h, kind)
    return [topic_for(kind, h["stream"]), packed, memoryview(arr).cast("B")]


def encode_frames(stream: str, frames: Any, *, seq: int, t_ns: int, fs: float | None = None,
                  meta: dict | None = None) -> list:
    """Encode raw input frames as a ``frames/<stream>`` message.

    Parameters
    ----------
    stream : str
        Stream name, 1 to 128 printable characters.
    frames : array_like, shape (n, *frame_shape)
    seq : int
        Index of the first frame of the chunk, >= 0.
    t_ns : int
        Acquisition time of the first frame in ns (sender's clock).
    fs : float, optional
        Frame rate in Hz.
    meta : dict, optional
        Passed through to consumers (string keys, msgpack-serializable values).
    """
    h: dict = {"stream": stream, "seq": _as_int("seq", seq), "t_ns": _as_int("t_ns", t_ns)}
    if fs is not None:
        h["fs"] = float(fs)
    if meta is not None:
        h["meta"] = meta
    return encode(FRAMES, h, frames)


def encode_denoised(header: dict, frames: Any) -> list:
    """Encode output frames as a ``denoised/<stream>`` message.

    ``header`` is typically the input chunk's header plus the :data:`OUTPUT_KEYS`
    (``t_recv_ns``, ``t_pub_ns``, ``lag``, ``model``, ``gap``, ``warm``); ``v``,
    ``n``, ``shape`` and ``dtype`` are taken from ``frames``.
    """
    return encode(DENOISED, header, frames)


def _as_int(key: str, x: Any) -> int:
    """Accept numpy integers from callers; msgpack only packs Python ints."""
    try:
        return operator.index(x)
    except TypeError:
        raise WireError("header_value", f"{key} must be an int, got {type(x).__name__} {_show(x)}") from None


# ----------------------------------------------------------------------------- decode


def _as_bytes_view(part: Any, name: str) -> memoryview:
    """A flat byte view of one part: bytes, bytearray, memoryview, ndarray or zmq.Frame."""
    obj = getattr(part, "buffer", part)  # zmq.Frame exposes its data as .buffer
    if isinstance(obj, str):
        raise WireError("parts", f"{name} part must be bytes-like, got str {_show(obj)}")
    try:
        mv = memoryview(obj)
    except TypeError:
        raise WireError("parts", f"{name} part must be bytes-like, got {type(part).__name__}") from None
    if mv.format != "B" or mv.ndim != 1:
        if not mv.c_contiguous:
            raise WireError("parts", f"{name} part is not a contiguous buffer")
        mv = mv.cast("B")
    return mv


def _unpack_header(raw: Any) -> Any:
    n = len(raw)
    if n == 0:
        raise WireError("header_msgpack", "header part is empty (0 bytes); expected a msgpack map")
    try:
        # Every length bounded by the part's own size; ext types (incl. timestamps) refused.
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True,
            max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n, max_ext_len=0,
        )
    except Exception as e:  # msgpack raises ValueError, StackError, ExtraData, TypeError...
        head = bytes(raw[:16]).hex(" ")
        raise WireError(
            "header_msgpack",
            f"header is not valid msgpack ({type(e).__name__}: {_show(str(e), 60)}); "
            f"{n} bytes starting {head}",
        ) from None


def decode(parts: Any, *, copy: bool = False, kind: str | None = None,
           max_header_bytes: int = MAX_HEADER_BYTES,
           max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> tuple[str, dict, np.ndarray]:
    """Validate and decode one message.

    Parameters
    ----------
    parts : sequence of 3 bytes-like
        bytes, bytearray, memoryview or ``zmq.Frame`` (as ``recv_multipart(copy=False)``
        returns).
    copy : bool
        False (default): ``frames`` is a view on the payload buffer (read-only when the
        buffer is), unless the buffer is not aligned for the dtype, as small zmq messages
        often are: then an aligned copy. True: always a writable copy.
    kind : {"frames", "denoised"}, optional
        Require this topic kind; by default either is accepted.
    max_header_bytes, max_payload_bytes : int
        Size limits; bigger parts raise ``WireError`` with reason ``too_large``.

    Returns
    -------
    topic : str
        ``"frames/<stream>"`` or ``"denoised/<stream>"``.
    header : dict
        The validated header.
    frames : np.ndarray, shape (n, *shape), dtype ``header["dtype"]``

    Raises
    ------
    WireError
        Whatever is wrong; ``.reason`` is one of :data:`REASONS`.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {_show(kind)}")
    if isinstance(parts, (bytes, bytearray, memoryview, str)):
        raise WireError("parts", f"expected a sequence of 3 parts, got a single {type(parts).__name__}")
    try:
        parts = list(parts)
    except TypeError:
        raise WireError("parts", f"expected a sequence of 3 parts, got {type(parts).__name__}") from None
    if len(parts) != 3:
        raise WireError("parts", f"expected 3 parts (topic, header, payload), got {len(parts)}")
    topic_b = _as_bytes_view(parts[0], "topic")
    header_b = _as_bytes_view(parts[1], "header")
    payload = _as_bytes_view(parts[2], "payload")

    # Sizes first: cheap, and nothing big gets parsed.
    if len(header_b) > max_header_bytes:
        raise WireError("too_large", f"header is {len(header_b)} bytes, limit {max_header_bytes}")
    if len(payload) > max_payload_bytes:
        raise WireError("too_large", f"payload is {len(payload)} bytes, limit {max_payload_bytes}")

    if not 0 < len(topic_b) <= _MAX_TOPIC_BYTES:
        raise WireError("topic", f"topic is {len(topic_b)} bytes, expected 1 to {_MAX_TOPIC_BYTES}")
    try:
        topic = bytes(topic_b).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("topic", f"topic is not UTF-8: {_show(bytes(topic_b))}") from None
    topic_kind, sep, topic_stream = topic.partition("/")
    if not sep or topic_kind not in KINDS or not topic_stream:
        raise WireError("topic", f"topic must be 'frames/<stream>' or 'denoised/<stream>', got {topic!r}")
    if kind is not None and topic_kind != kind:
        raise WireError("topic", f"expected a {kind}/ topic, got {topic!r}")

    h = validate_header(_unpack_header(header_b), kind=topic_kind)
    if h["stream"] != topic_stream:
        raise WireError("topic", f"topic {topic!r} does not match header stream {h['stream']!r}")

    dtype = np.dtype(h["dtype"])
    n, shape = h["n"], tuple(h["shape"])
    expected = n * math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if expected > max_payload_bytes:
        raise WireError(
            "too_large",
            f"header announces n×prod(shape)×itemsize = {n}×{math.prod(shape)}×{dtype.itemsize} "
            f"= {expected} bytes, limit {max_payload_bytes}",
        )
    if len(payload) != expected:
        raise WireError(
            "payload_size",
            f"payload is {len(payload)} bytes, expected n×prod(shape)×itemsize = "
            f"{n}×{math.prod(shape)}×{dtype.itemsize} = {expected} "
            f"(n={n}, shape={list(shape)}, dtype={h['dtype']!r})",
        )
    frames = np.frombuffer(payload, dtype=dtype).reshape((n, *shape))
    # libzmq hands small messages (<= 8 KiB) out of a shared receive buffer at any byte
    # offset; an unaligned array is slow and some consumers (torch) refuse it: copy those.
    if copy or not frames.flags.aligned:
        frames = frames.copy()
    return topic, h, frames
