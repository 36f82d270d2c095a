"""Publisher and subscriber clients for wire protocol v1.

The socket code only moves parts; everything about the message format lives in
:mod:`rtdenoise.stream.wire`.

Either side may bind (``bind=True``); the other connects. Bind to
``"tcp://127.0.0.1:*"`` for a free port and read the chosen endpoint from ``.address``.
PUB/SUB drops what is published before a subscriber has connected (ZeroMQ's "slow
joiner"): a publisher that must not lose its first frames waits a moment after
connecting, or checks downstream that ``seq`` starts where it expects.

Against a service run with CURVE (``rtdenoise serve --curve-keys DIR``) pass
``curve_keys=(client_secret_key_file, server_public_key_file)``: the client is then a
CURVE client (encrypted, and admitted only if its public key is in the service's
``authorized/``), whichever side binds. See :mod:`rtdenoise.security`.

Examples
--------
>>> import numpy as np
>>> with Subscriber("tcp://127.0.0.1:*", kind="frames", bind=True) as sub, \\
...      Publisher(sub.address, stream="rig1", fs=100.0) as pub:
...     while True:                                   # until the connection is up
...         seq = pub.send(np.zeros(152, dtype="<u2"))  # one spectrum, n=1
...         try:
...             header, frames = sub.recv(timeout=0.05)
...             break
...         except TimeoutError:
...             pass
>>> header["stream"], frames.shape
('rig1', (1, 152))
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Iterable, Iterator

import numpy as np
import zmq

from rtdenoise.stream import wire
from rtdenoise.stream.sockets import open_client

__all__ = ["Publisher", "Subscriber"]


class _SocketClient:
    """What both clients share: one socket, closed with a linger, usable with ``with``."""

    _socket: zmq.Socket
    linger: int

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def close(self, linger: int | None = None) -> None:
        """Close the socket; ``linger`` (ms) defaults to the constructor's."""
        if not self._socket.closed:
            self._socket.close(linger=self.linger if linger is None else linger)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Publisher(_SocketClient):
    """Publish one stream's frames as ``frames/<stream>`` messages.

    Parameters
    ----------
    address : str
        ZeroMQ endpoint, e.g. ``"tcp://127.0.0.1:5555"``.
    stream : str
        Stream name, 1 to 128 printable characters.
    bind : bool
        Bind instead of connect (default: connect to a subscriber that binds).
    fs : float, optional
        Frame rate in Hz, sent in every header.
    shape : tuple of int, optional
        One frame's shape. Needed to send a single image ``(H, W)`` before any chunk;
        without it a 1-D array is one spectrum and an N-D array is ``(n, *shape)``.
        After the first send the stream's frame shape and dtype are fixed.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    linger : int
        ms to keep unsent messages at :meth:`close` (0: drop them).
    curve_keys : (str, str), optional
        ``(client_secret_key_file, server_public_key_file)`` to talk to a CURVE service.
    immediate : bool
        True (default): while the connection is down (the service restarting, say),
        frames are dropped (``ZMQ_IMMEDIATE``); the service sees the jump in ``seq``.
        False: libzmq queues them (up to its high-water mark, 1000 messages) and
        delivers them late, in a burst, once the connection is back; a live system
        would then act on stale frames. Only matters when connecting.

    Attributes
    ----------
    address : str
        The endpoint in use; with ``bind=True`` the one actually bound.
    next_seq : int
        ``seq`` the next :meth:`send` uses when not given one.
    """

    def __init__(self, address: str, *, stream: str, bind: bool = False, fs: float | None = None,
                 shape: tuple[int, ...] | None = None, context: zmq.Context | None = None,
                 linger: int = 0, curve_keys=None, immediate: bool = True):
        wire.validate_stream_name(stream)
        if fs is not None and not (isinstance(fs, (int, float)) and math.isfinite(fs) and fs > 0):
            raise ValueError(f"fs must be a finite frame rate > 0 in Hz, got {fs!r}")
        self.stream = stream
        self.fs = None if fs is None else float(fs)
        self._shape = None if shape is None else tuple(int(d) for d in shape)
        self._dtype: np.dtype | None = None
        self.next_seq = 0
        self.linger = linger
        self._socket, self.address = open_client(zmq.PUB, address, bind=bind, curve_keys=curve_keys, context=context,
                                                 options=[(zmq.IMMEDIATE, int(bool(immediate)))])

    def send(self, frames: Any, *, seq: int | None = None, t_ns: int | None = None,
             meta: dict | None = None, copy: bool = False) -> int:
        """Publish a chunk of frames.

        Parameters
        ----------
        frames : array_like, shape (n, *shape) or shape
            A chunk, or one frame (sent as n=1).
        seq : int, optional
            Index of the first frame; default: the previous seq + previous n (0 first).
        t_ns : int, optional
            Acquisition time of the first frame in ns; default ``time.time_ns()`` now.
        meta : dict, optional
            Passed through to consumers.
        copy : bool, optional
            Default (False): pyzmq decides, by the socket's ``copy_threshold``: payloads of
            64 kB or more are sent zero-copy, smaller ones copied. A zero-copy send reads
            ``frames`` after this call returns: don't overwrite it in place right away
            (pass ``copy=True`` when reusing an acquisition buffer).

        Returns
        -------
        int
            The seq sent.
        """
        if self._socket.closed:
            raise RuntimeError(f"Publisher for stream {self.stream!r} is closed")
        arr = np.asarray(frames)
        if (self._shape is None and arr.ndim == 1) or (self._shape is not None and arr.shape == self._shape):
            arr = arr[None]  # one frame -> a chunk of n=1
        if self._shape is not None and arr.shape[1:] != self._shape:
            raise ValueError(
                f"stream {self.stream!r} carries frames of shape {self._shape}; got an array of "
                f"shape {np.shape(frames)}, expected {self._shape} or (n, {', '.join(map(str, self._shape))})"
            )
        if self._dtype is not None and arr.dtype != self._dtype:
            raise ValueError(
                f"stream {self.stream!r} carries {self._dtype.str!r} frames; got {arr.dtype.str!r}. "
                f"Convert (frames.astype({self._dtype.str!r})) or publish another stream"
            )
        seq = self.next_seq if seq is None else seq
        parts = wire.encode_frames(
            self.stream, arr, seq=seq, t_ns=time.time_ns() if t_ns is None else t_ns,
            fs=self.fs, meta=meta,
        )
        self._socket.send_multipart(parts, copy=bool(copy))
        self._shape, self._dtype = arr.shape[1:], arr.dtype
        self.next_seq = int(seq) + arr.shape[0]
        return int(seq)

    def __repr__(self) -> str:
        return f"Publisher({self.address!r}, stream={self.stream!r}, next_seq={self.next_seq})"


class Subscriber(_SocketClient):
    """Receive ``denoised/`` (or ``frames/``) messages, decoded and validated.

    Parameters
    ----------
    address : str
        ZeroMQ endpoint.
    streams : str or iterable of str, optional
        Streams to receive; default all of ``kind``. Only these exact names are
        returned (a ZeroMQ prefix subscription to ``denoised/cam1`` would also match
        ``denoised/cam10``; those messages are skipped).
    kind : {"denoised", "frames"}
        Which topics to receive.
    bind : bool
        Bind instead of connect.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    rcvhwm : int
        Receive high-water mark in messages; beyond it ZeroMQ drops new messages.
    linger : int
        ms passed to ``close``.
    drop_invalid : bool
        False: :meth:`recv` raises :class:`~rtdenoise.stream.wire.WireError` on a
        malformed message. True: skip it. Either way it is counted in ``rejected``.
    max_header_bytes, max_payload_bytes : int
        Size limits passed to :func:`~rtdenoise.stream.wire.decode`.
    curve_keys : (str, str), optional
        ``(client_secret_key_file, server_public_key_file)`` to talk to a CURVE service.

    Attributes
    ----------
    address : str
        The endpoint in use; with ``bind=True`` the one actually bound.
    rejected : collections.Counter
        Malformed messages received, by ``WireError.reason``.
    """

    def __init__(self, address: str, *, streams: str | Iterable[str] | None = None,
                 kind: str = wire.DENOISED, bind: bool = False, context: zmq.Context | None = None,
                 rcvhwm: int = 1000, linger: int = 0, drop_invalid: bool = False,
                 max_header_bytes: int = wire.MAX_HEADER_BYTES,
                 max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES, curve_keys=None):
        if kind not in wire.KINDS:
            raise ValueError(f"kind must be one of {wire.KINDS}, got {kind!r}")
        if isinstance(streams, str):
            streams = [streams]
        self.streams = None if streams is None else frozenset(wire.validate_stream_name(s) for s in streams)
        if self.streams is not None and not self.streams:
            raise ValueError("streams is empty; pass None to receive every stream")
        self.kind = kind
        self.linger = linger
        self.drop_invalid = drop_invalid
        self.rejected: collections.Counter = collections.Counter()
        self._limits = dict(max_header_bytes=max_header_bytes, max_payload_bytes=max_payload_bytes)
        topics = [wire.topic_for(kind)] if self.streams is None else \
            [wire.topic_for(kind, s) for s in sorted(self.streams)]
        self._socket, self.address = open_client(zmq.SUB, address, bind=bind, curve_keys=curve_keys, context=context,
                                                 options=[(zmq.RCVHWM, rcvhwm)] + [(zmq.SUBSCRIBE, t) for t in topics])

    def recv(self, timeout: float | None = None) -> tuple[dict, np.ndarray]:
        """Receive the next valid message of the subscribed streams.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most; None waits forever.

        Returns
        -------
        header : dict
        frames : np.ndarray, shape (n, *header["shape"])
            A view on the received message's buffer (no copy), or an aligned copy
            when that buffer is not aligned for the dtype (small messages).

        Raises
        ------
        TimeoutError
            Nothing arrived within ``timeout`` seconds.
        WireError
            A malformed message arrived (unless ``drop_invalid``).
        """
        if self._socket.closed:
            raise RuntimeError(f"Subscriber on {self.address!r} is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait_ms = None
            else:
                wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                raise TimeoutError(f"no {self.kind}/ message on {self.address} within {timeout} s")
            parts = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            try:
                _, header, frames = wire.decode(parts, kind=self.kind, **self._limits)
            except wire.WireError as e:
                self.rejected[e.reason] += 1
                if self.drop_invalid:
                    continue
                raise
            if self.streams is not None and header["stream"] not in self.streams:
                continue  # a longer name sharing a subscribed prefix
            return header, frames

    def __iter__(self) -> Iterator[tuple[dict, np.ndarray]]:
        """``for header, frames in sub:`` — blocks for each message, ends when closed."""
        while not self._socket.closed:
            yield self.recv()

    def __repr__(self) -> str:
        streams = None if self.streams is None else sorted(self.streams)
        return f"Subscriber({self.address!r}, kind={self.kind!r}, streams={streams})"
