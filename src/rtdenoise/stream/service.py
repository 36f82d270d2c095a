"""The live service: receive frames, denoise each stream causally, publish, answer control.

Three stages, each on its own thread and owning exactly one ZeroMQ socket (sockets are
not thread-safe)::

    [SUB] receive thread ──▶ per-stream bounded queue ──▶ engine thread ──▶ [PUB]
            decode + validate       (frames waiting)        step + publish
    [REP] control thread: status / reset / stop (JSON), reads the counters under the lock

- The **receive thread** drains the SUB socket continuously and never waits for the
  engine thread. It decodes every message (:func:`rtdenoise.stream.wire.decode`), checks it
  against its stream (first message fixes shape and dtype; NaN/inf refused), counts
  rejections by reason, and appends the message to the stream's queue.
- A queue holds at most ``max_queue`` frames. On overflow the **oldest** queued messages
  are dropped (counted per stream as ``dropped``): a closed-loop controller wants the
  newest frames, and the engine then sees a ``seq`` jump, resets that stream's context
  and flags the jump in the next output header's ``gap``. A single message larger than
  ``max_queue`` is still accepted whole.
- The **engine thread** takes *all* pending messages of a stream at once and steps the
  engine on each run of contiguous messages as one chunk, so a backlog is worked off in
  big, cheap steps, and publishes one ``denoised/<stream>`` message per run.
- The **control thread** answers JSON requests on a REP socket (see :func:`control`).
- The receive thread also reads libzmq's **socket monitors** of all three sockets and
  counts connection events per socket (``connections`` in status): accepted and
  closed connections, failed handshakes (a refused CURVE key, a plaintext client
  against a CURVE service). A connecting input whose connection libzmq drops for a
  protocol error (e.g. a message part over ``ZMQ_MAXMSGSIZE``) is connected again:
  libzmq itself would never retry it.

Security: by default every socket binds to loopback. With ``curve_keys`` (a directory
made by ``rtdenoise keys``, see :mod:`rtdenoise.security`) the service is the CURVE
server on all three sockets, whichever side binds: traffic is encrypted and only
clients whose public key is in ``curve_keys/authorized/`` get in. Binding anything but
loopback without it warns.

Sequence numbers, per stream, as the engine sees them: the expected next ``seq`` is the
previous ``seq + n``. A jump forward is a gap, a jump back (or a repeat) a restarted
acquisition; either way the outputs still owed for frames before it (a lag-``k`` model
owes ``k``) are flushed by repeating the last frame, exactly as offline
:func:`rtdenoise.denoise.denoise` ends a recording, then the context is reset. So every
input frame gets exactly one output frame, whatever happens, and
``frames_in == frames_out + dropped + discarded + queue_depth + in_flight``.

Output headers (``denoised/<stream>``), beyond the wire's rules:

- ``seq``, ``n``, ``t_ns`` describe the output frames: with lag ``k`` the output for input
  frame ``s`` carries ``seq = s`` and frame ``s``'s own ``t_ns`` (per-frame times come
  from the input's ``fs``; without ``fs`` the frames of a chunk share its ``t_ns``).
- ``gap``: input frames missing before this message's first frame as the engine saw
  them (lost upstream *or* dropped here on overflow).
- ``warm``: every frame of the message was computed with a full receptive field
  (for ``n = 1`` this is ``engine.warm(state)``).
- ``t_recv_ns``: arrival of the oldest input message the output was computed with;
  ``t_pub_ns``: just before the send; ``fs``/``meta``: from the latest input message.

Status counters per stream: ``gaps``/``frames_missing``/``restarts`` are counted on
arrival (upstream losses only); ``dropped`` are frames this service dropped on overflow;
``discarded`` frames the engine refused; ``rejected`` messages refused, by reason
(:data:`SERVICE_REASONS` and :data:`rtdenoise.stream.wire.REASONS`, also counted
globally in ``rejected_by_reason``).

Examples
--------
Run it in-process on free loopback ports and ask for its status::

    from rtdenoise.stream import Service, control

    with Service(model="models/spectral-lag0.pt", bind_sub=True, sub="tcp://127.0.0.1:*",
                 pub="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*") as svc:
        print(svc.addresses)            # publishers connect to "sub", consumers to "pub"
        print(control(svc.control_address, "status")["streams"])

From a shell: ``rtdenoise serve --model M`` and ``rtdenoise status``.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import zmq

from rtdenoise.stream import wire
from rtdenoise.stream.client import COPY_THRESHOLD

__all__ = ["ServiceConfig", "Service", "serve", "control", "format_status", "SERVICE_REASONS"]

log = logging.getLogger(__name__)

#: Reasons the service rejects a well-formed message, beyond the wire's :data:`wire.REASONS`.
SERVICE_REASONS = (
    "frame_shape",  # first message of a stream: frames not of the shape the model takes
    "shape_change",  # frame shape differs from the stream's first message
    "dtype_change",  # dtype differs from the stream's first message
    "too_many_streams",  # a new stream beyond max_streams
    "bad_frames",  # NaN/inf samples, or the engine refused the chunk (ValueError/TypeError)
    "internal_error",  # a bug: logged with its traceback; the service keeps serving
)

_WAIT_S = 0.05  # how often idle threads look at the stop flag
_JOIN_S = 5.0
_CONTROL_LINGER_MS = 200  # lets the reply to "stop" leave before the REP socket closes
_MAX_STEP = 1024  # most frames per engine step (a backlog or a huge message is stepped in pieces, as offline)
# An output header repeats the input's keys and adds ~100 bytes (t_recv_ns, model, ...): an
# input header must leave that room under the wire's limit, or its outputs could not be sent.
_MAX_INPUT_HEADER = wire.MAX_HEADER_BYTES - 1024
_DRAIN_MAX = 1000  # messages read per wake-up before looking at the monitors and the stop flag again
_SMALL_MSG_BYTES = 64 * 1024  # ZMQ_MAXMSGSIZE of the PUB (inbound subscriptions) and the control REP
# libzmq socket events counted in status["connections"], by socket.
_EVENTS = {
    "EVENT_ACCEPTED": "accepted", "EVENT_CONNECTED": "connected", "EVENT_DISCONNECTED": "disconnected",
    "EVENT_HANDSHAKE_SUCCEEDED": "handshake_ok", "EVENT_HANDSHAKE_FAILED_AUTH": "auth_refused",
    "EVENT_HANDSHAKE_FAILED_NO_DETAIL": "handshake_failed", "EVENT_HANDSHAKE_FAILED_PROTOCOL": "handshake_failed",
}
_EVENT_NAMES = {getattr(zmq, k): v for k, v in _EVENTS.items()}
_MONITOR_IDS = itertools.count()


@dataclass
class ServiceConfig:
    """Everything the service needs; one field per choice, with its reason.

    Addresses are ZeroMQ endpoints; ``tcp://127.0.0.1:*`` binds a free port (read the
    chosen one from :attr:`Service.addresses`).
    """

    model: Any = None  # checkpoint path, shipped name, Checkpoint, or None = the shipped default
    backend: str = "auto"  # torch | onnxruntime | tensorrt | auto (the fastest measured for the model here)
    sub: str = "tcp://127.0.0.1:5555"  # input frames; connects to an acquisition PUB that binds
    bind_sub: bool = False  # bind the input instead (many publishers connect to one service)
    pub: str = "tcp://127.0.0.1:5556"  # output, always bound: consumers connect
    control: str = "tcp://127.0.0.1:5557"  # REP for status/reset/stop, always bound
    subscribe: tuple[str, ...] = ("",)  # stream-name prefixes to take (one service per share of streams)
    max_queue: int = 1000  # frames per stream waiting for the engine; beyond, the oldest are dropped
    max_streams: int = 64  # streams held at once; messages of more are rejected
    max_header_bytes: int = _MAX_INPUT_HEADER  # passed to wire.decode; room left for what outputs add
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES  # passed to wire.decode and ZMQ_MAXMSGSIZE
    rcvhwm: int = 10_000  # messages libzmq buffers before the receive thread reads them
    latency_window: int = 1000  # recent messages the latency percentiles cover
    threads: int | None = None  # engine threads (None: the engine's default, 1 on the CPU backends)
    curve_keys: Any = None  # directory with server.key_secret and authorized/*.key: CURVE on every socket

    def validate(self) -> None:
        if isinstance(self.max_header_bytes, int) and self.max_header_bytes > _MAX_INPUT_HEADER:
            raise ValueError(f"max_header_bytes must be <= {_MAX_INPUT_HEADER} (the wire's {wire.MAX_HEADER_BYTES} less "
                             f"room for the keys output headers add), got {self.max_header_bytes}")
        for name in ("max_queue", "max_streams", "max_header_bytes", "max_payload_bytes", "rcvhwm",
                     "latency_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1 or None, got {self.threads!r}")
        for name in ("sub", "pub", "control"):
            v = getattr(self, name)
            if not isinstance(v, str) or "://" not in v:
                raise ValueError(f"{name} must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {v!r}")
        if isinstance(self.subscribe, str):
            self.subscribe = (self.subscribe,)
        self.subscribe = tuple(self.subscribe)
        if not self.subscribe or not all(isinstance(s, str) for s in self.subscribe):
            raise ValueError(f"subscribe must be stream-name prefixes ('' = all), got {self.subscribe!r}")
        if self.curve_keys is not None and not isinstance(self.curve_keys, (str, os.PathLike)):
            raise TypeError(f"curve_keys must be a directory path (made by `rtdenoise keys DIR`), got {self.curve_keys!r}")


def _is_loopback(address: str) -> bool:
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].split(";")[-1].strip("[]")
    return host in ("localhost", "::1", "lo") or host.startswith("127.")


def _percentiles(values) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50": round(float(p50), 4), "p90": round(float(p90), 4),
            "p99": round(float(p99), 4), "max": round(float(a.max()), 4)}


class _Msg:
    """One received chunk waiting for the engine."""

    __slots__ = ("seq", "n", "frames", "t_ns", "fs", "meta", "t_recv_ns")

    def __init__(self, header: dict, frames: np.ndarray, t_recv_ns: int):
        self.seq, self.n, self.t_ns = header["seq"], header["n"], header["t_ns"]
        self.fs, self.meta = header.get("fs"), header.get("meta")
        self.frames, self.t_recv_ns = frames, t_recv_ns

    def frame_times(self) -> list[int]:
        """t_ns of each frame: from ``fs`` when given, else the chunk's t_ns for all."""
        if not self.fs:
            return [self.t_ns] * self.n
        return [self.t_ns + round(j * 1e9 / self.fs) for j in range(self.n)]


class _Stream:
    """Everything the service holds for one stream. Fields under "rx" belong to the receive
    thread, under "engine" to the engine thread; both are read by status under the lock."""

    def __init__(self, name: str, shape: tuple, dtype: np.dtype, window: int):
        self.name, self.shape, self.dtype = name, shape, dtype
        # rx
        self.queue: collections.deque[_Msg] = collections.deque()
        self.queued = 0  # frames in queue
        self.rx_next: int | None = None
        self.frames_in = self.messages_in = 0
        self.gaps = self.frames_missing = self.restarts = 0
        self.dropped = 0
        self.rejected: collections.Counter = collections.Counter()
        self.reset_requested = False
        # engine
        self.state = None  # engine StreamState, made by the engine thread
        self.next_seq: int | None = None  # seq the engine expects next (None: any, after a reset)
        self.fresh = True  # no frame stepped since the last reset
        self.out_seq = 0  # seq of the next output frame
        self.out_index = 0  # output frames since the last reset
        self.pending_t: collections.deque[int] = collections.deque()  # t_ns of frames owed an output
        self.last_frame: np.ndarray | None = None  # repeated to flush the lag, as offline does
        self.last_fs = self.last_meta = None
        self.pending_gap = 0
        self.warm = False
        self.frames_out = self.messages_out = self.discarded = self.resets = 0
        self.latency_ms = collections.deque(maxlen=window)
        self.queue_ms = collections.deque(maxlen=window)
        self.engine_ms = collections.deque(maxlen=window)
        self.publish_ms = collections.deque(maxlen=window)

    def snapshot(self) -> dict:
        return {
            "shape": list(self.shape), "dtype": self.dtype.str,
            "frames_in": self.frames_in, "messages_in": self.messages_in,
            "frames_out": self.frames_out, "messages_out": self.messages_out,
            "gaps": self.gaps, "frames_missing": self.frames_missing, "restarts": self.restarts,
            "resets": self.resets, "dropped": self.dropped, "discarded": self.discarded,
            "rejected": sum(self.rejected.values()), "rejected_by_reason": dict(self.rejected),
            "queue_depth": self.queued, "in_flight": len(self.pending_t), "warm": self.warm,
            "last_seq": None if self.rx_next is None else self.rx_next - 1,
            # copies, taken under the lock; stats() turns them into percentiles outside it
            "latency_ms": list(self.latency_ms),
            "stages_ms": {"queue": list(self.queue_ms), "engine": list(self.engine_ms),
                          "publish": list(self.publish_ms)},
        }


class Service:
    """Denoise every stream arriving on ``sub`` and publish it on ``pub``.

    Parameters
    ----------
    config : ServiceConfig, optional
        Default ``ServiceConfig()``; keyword arguments override its fields.
    engine : Engine, optional
        An engine already loaded (``config.model``/``backend`` are then ignored).
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``; with ``curve_keys`` a new context of the
        service's own (its CURVE authenticator is one per context).
    **overrides
        Any :class:`ServiceConfig` field, e.g. ``model="tiny.pt", bind_sub=True``.

    The model is loaded and every socket bound or connected here, so a bad model path or
    an address in use fails at construction with the offending value in the message.
    :meth:`start` runs the threads; :meth:`stop` ends them and closes the sockets
    (linger 0). Use as a context manager to do both.

    Attributes
    ----------
    addresses : dict
        ``{"sub": ..., "pub": ..., "control": ...}``, the endpoints actually bound.
    engine : Engine
    """

    def __init__(self, config: ServiceConfig | None = None, *, engine=None,
                 context: zmq.Context | None = None, **overrides):
        config = dataclasses.replace(config or ServiceConfig(), **overrides)
        config.validate()
        self.config = config
        self._curve = None
        if config.curve_keys is not None:  # missing or bad keys fail here, before the model loads
            from rtdenoise import security

            self._curve = security.load_server_keys(config.curve_keys)
        if engine is None:
            from rtdenoise.backends import load_engine

            # Engines take `threads` (torch: process-wide intra-op; ORT: the session's).
            kw = {} if config.threads is None else {"threads": config.threads}
            engine = load_engine(config.model, backend=config.backend, **kw)
        self.engine = engine
        self.lag = int(engine.lag)
        self._own_ctx = context is None and self._curve is not None
        self._ctx = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth = None  # the CURVE ZAP handler
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._ready: dict[str, None] = {}  # insertion-ordered set of streams with work
        self._rejected: collections.Counter = collections.Counter()
        self._log_counts: collections.Counter = collections.Counter()
        self._messages_in = 0
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._t_start: float | None = None
        self._t_stop: float | None = None
        self.addresses: dict[str, str] = {}
        self._sub = self._pub = self._rep = None
        self._monitors: dict[str, zmq.Socket] = {}  # socket name -> its monitor (read by the receive thread)
        self._connections = {name: collections.Counter() for name in ("sub", "pub", "control")}
        try:
            self._open_sockets()
        except Exception:
            self._close_sockets()
            self._end_security()
            raise

    # ------------------------------------------------------------------ sockets
    def _open_sockets(self) -> None:
        c = self.config
        for name, bind in (("sub", c.bind_sub), ("pub", True), ("control", True)):
            addr = getattr(c, name)
            if bind and not _is_loopback(addr) and self._curve is None:
                msg = (f"rtdenoise service: {name} binds to {addr}, reachable from other machines "
                       "without authentication (anyone there can publish frames, read outputs, or stop "
                       "the service); bind to tcp://127.0.0.1 unless this network is trusted, or turn on "
                       "CURVE encryption and authentication: make keys with `rtdenoise keys DIR`, copy "
                       "each client's NAME.key into DIR/authorized/, and serve with --curve-keys DIR "
                       "(ServiceConfig.curve_keys)")
                warnings.warn(msg, RuntimeWarning, stacklevel=4)
        if self._curve is not None:
            from rtdenoise import security

            # Before any bind: without a ZAP handler libzmq would admit every CURVE client.
            self._auth = security.start_authenticator(self._ctx, self._curve)
        self._sub = self._socket(zmq.SUB, "sub")
        self._sub.setsockopt(zmq.RCVHWM, c.rcvhwm)
        # libzmq drops (and disconnects) any part above this before it reaches us.
        self._sub.setsockopt(zmq.MAXMSGSIZE, max(c.max_header_bytes, c.max_payload_bytes))
        for prefix in c.subscribe:
            self._sub.setsockopt(zmq.SUBSCRIBE, wire.topic_for(wire.FRAMES) + prefix.encode())
        self.addresses["sub"] = self._attach(self._sub, "sub", c.sub, c.bind_sub)
        self._pub = self._socket(zmq.PUB, "pub")
        self._pub.setsockopt(zmq.MAXMSGSIZE, _SMALL_MSG_BYTES)  # what comes in on a PUB: subscriptions
        self.addresses["pub"] = self._attach(self._pub, "pub", c.pub, True)
        self._rep = self._socket(zmq.REP, "control")
        self._rep.setsockopt(zmq.MAXMSGSIZE, _SMALL_MSG_BYTES)
        self.addresses["control"] = self._attach(self._rep, "control", c.control, True)

    def _socket(self, kind: int, name: str) -> zmq.Socket:
        """A new socket with the CURVE server role (when on) and a monitor, before it binds."""
        sock = self._ctx.socket(kind)
        if self._curve is not None:
            from rtdenoise import security

            security.apply_server(sock, self._curve)
        events = 0
        for ev in _EVENTS:
            events |= getattr(zmq, ev)
        # libzmq sends monitor events *blocking*, from its I/O thread: a monitor nobody reads
        # (closed, or with a full pipe) would freeze every socket of the context. So the reader
        # has no high-water mark, lives until the monitored socket has stopped its monitor (see
        # _close), and the address is unique (pyzmq's default reuses file descriptor numbers).
        addr = f"inproc://rtdenoise-monitor-{next(_MONITOR_IDS)}-{name}"
        sock.monitor(addr, events)
        mon = self._ctx.socket(zmq.PAIR)
        mon.rcvhwm = 0
        mon.linger = 0
        mon.connect(addr)
        self._monitors[name] = mon
        return sock

    @staticmethod
    def _attach(sock: zmq.Socket, name: str, addr: str, bind: bool) -> str:
        try:
            if bind:
                sock.bind(addr)
                return sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            sock.connect(addr)
            return addr
        except zmq.ZMQError as e:
            verb = "bind" if bind else "connect"
            hint = "; is another service running there? pick another port" if e.errno == zmq.EADDRINUSE else ""
            raise ValueError(f"cannot {verb} the {name} socket to {addr!r}: {e}{hint}") from None

    @staticmethod
    def _close(sock: zmq.Socket | None, linger: int = 0) -> None:
        """Stop a socket's monitor, then close it (the monitor's reader stays open until stop())."""
        if sock is None or sock.closed:
            return
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        sock.close(linger=linger)

    def _close_sockets(self) -> None:
        self._close(self._sub)
        self._close(self._pub)
        self._close(self._rep, _CONTROL_LINGER_MS)
        for mon in self._monitors.values():  # only now: nothing can send them events any more
            if not mon.closed:
                mon.close(linger=0)

    def _end_security(self) -> None:
        """Stop the ZAP handler and end the service's own context (after the sockets closed)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    @property
    def sub_address(self) -> str:
        return self.addresses["sub"]

    @property
    def pub_address(self) -> str:
        return self.addresses["pub"]

    @property
    def control_address(self) -> str:
        return self.addresses["control"]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Service:
        """Start the receive, engine and control threads. Returns self."""
        if self._threads:
            raise RuntimeError("Service.start() was already called; a Service runs once")
        if self._sub is None or self._sub.closed:
            raise RuntimeError("Service is closed; make a new one")
        self._t_start = time.monotonic()
        for name, target in (("receive", self._receive_loop), ("engine", self._engine_loop),
                             ("control", self._control_loop)):
            t = threading.Thread(target=self._guard, args=(name, target), name=f"rtdenoise-{name}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def _guard(self, name: str, target: Callable[[], None]) -> None:
        """Run one thread's loop; a crash stops the whole service rather than half of it."""
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - recorded and re-raised by stop()
            log.exception("rtdenoise service: the %s thread failed; stopping", name)
            self._errors.append(e)
            self._stop.set()

    def request_stop(self) -> None:
        """Ask the threads to stop; safe from a signal handler (touches no lock)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested (``stop`` command, signal, :meth:`request_stop`)."""
        return self._stop.wait(timeout)

    def stop(self) -> dict:
        """Stop the threads, close the sockets, return the final :meth:`stats`."""
        self._stop.set()
        for t in self._threads:
            t.join(_JOIN_S)
            if t.is_alive():
                log.warning("rtdenoise service: thread %s did not stop within %s s", t.name, _JOIN_S)
        if not any(t.is_alive() for t in self._threads):
            self._close_sockets()  # threads close their own; this catches a service never started
            self._end_security()
        if self._t_stop is None:
            self._t_stop = time.monotonic()
        if self._errors:  # a thread died: say so, not only in the log
            raise RuntimeError(f"the rtdenoise service stopped after an internal error: {self._errors[0]!r}") from self._errors[0]
        return self.stats()

    def __enter__(self) -> Service:
        return self.start() if not self._threads else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Service(model={self.engine.name!r}, backend={self.engine.backend!r}, lag={self.lag}, "
                f"addresses={self.addresses})")

    # ------------------------------------------------------------------ counting
    def _reject(self, reason: str, message: str, stream: _Stream | None = None, name: str | None = None) -> None:
        """Count a rejected message (caller holds the lock) and log it, rate-limited."""
        self._rejected[reason] += 1
        if stream is not None:
            stream.rejected[reason] += 1
        k = self._log_counts[reason] = self._log_counts[reason] + 1
        if k <= 10 or k % 1000 == 0:
            where = f"stream {name or (stream.name if stream else '?')!r}: " if (name or stream) else ""
            log.warning("rtdenoise service: rejected a message (%s, #%d): %s%s", reason, k, where, message)

    # ------------------------------------------------------------------ receive thread
    def _receive_loop(self) -> None:
        sock = self._sub
        limits = dict(max_header_bytes=self.config.max_header_bytes, max_payload_bytes=self.config.max_payload_bytes)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        for mon in self._monitors.values():
            poller.register(mon, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(int(_WAIT_S * 1000)))
                for name, mon in self._monitors.items():
                    if mon in ready:
                        self._read_monitor(name, mon)
                if sock not in ready:
                    continue
                for _ in range(_DRAIN_MAX):  # drain what is there (bounded: a flood never blinds the loop)
                    try:
                        parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    t_recv = time.time_ns()
                    try:
                        _, header, frames = wire.decode(parts, kind=wire.FRAMES, **limits)
                    except wire.WireError as e:
                        with self._lock:
                            self._messages_in += 1
                            self._reject(e.reason, str(e))
                        continue
                    try:
                        self._admit(header, frames, t_recv)
                    except Exception as e:  # a bug: count it, keep receiving
                        with self._lock:
                            self._reject("internal_error", f"{type(e).__name__}: {e}", name=header.get("stream"))
                        log.exception("rtdenoise service: receiving stream %r", header.get("stream"))
        finally:
            self._close(sock)

    def _read_monitor(self, name: str, mon: zmq.Socket) -> None:
        """Count one socket's connection events; connect the input again when libzmq gave up on it."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(mon, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = _EVENT_NAMES.get(event["event"])
            if kind is None:
                continue
            with self._lock:
                self._connections[name][kind] += 1
                k = self._log_counts[f"{name}.{kind}"] = self._log_counts[f"{name}.{kind}"] + 1
            quiet = not (k <= 10 or k % 1000 == 0)
            if kind == "auth_refused" and not quiet:
                log.warning("rtdenoise service: refused a client on %s (#%d): its CURVE public key is not in %s",
                            name, k, self._curve.authorized_dir if self._curve else "authorized/")
            elif kind == "handshake_failed" and not quiet:
                log.warning("rtdenoise service: a client on %s failed the handshake (#%d)%s", name, k,
                            ": a plaintext client, or a CURVE client with the wrong server key"
                            if self._curve else ": a CURVE client against this plaintext service?")
            elif kind == "disconnected" and name == "sub":
                if not quiet:
                    # Info, not warning: a publisher that closes is the usual cause; the count is
                    # in status (connections.sub.disconnected) either way.
                    log.info(
                        "rtdenoise service: an input connection closed (#%d): its publisher closed it, it failed "
                        "the handshake, or it sent a message part over %d bytes (max_header_bytes/max_payload_bytes, "
                        "ZMQ_MAXMSGSIZE), which libzmq refuses by dropping the connection; frames lost with it show "
                        "as a seq gap", k, max(self.config.max_header_bytes, self.config.max_payload_bytes))
                if not self.config.bind_sub:
                    # libzmq never retries a connection it closed for a protocol error; retry it here
                    # (harmless after an ordinary disconnect, which it would have retried itself).
                    addr = self.addresses["sub"]
                    try:
                        self._sub.disconnect(addr)
                    except zmq.ZMQError:
                        pass
                    self._sub.connect(addr)
                    with self._lock:
                        self._connections[name]["reconnect"] += 1

    def _admit(self, header: dict, frames: np.ndarray, t_recv: int) -> None:
        """Check a decoded message against its stream and queue it (receive thread)."""
        name, n = header["stream"], header["n"]
        shape, dtype = tuple(header["shape"]), frames.dtype
        finite = True
        if np.issubdtype(dtype, np.floating):
            finite = bool(np.isfinite(frames).all())
        with self._cv:
            self._messages_in += 1
            st = self._streams.get(name)
            if st is None:
                if shape != tuple(self.engine.frame_shape):
                    self._reject("frame_shape", f"frames of shape {shape}; model {self.engine.name!r} takes "
                                 f"{tuple(self.engine.frame_shape)}", name=name)
                    return
                if len(self._streams) >= self.config.max_streams:
                    self._reject("too_many_streams", f"already {len(self._streams)} streams (max_streams="
                                 f"{self.config.max_streams})", name=name)
                    return
                st = self._streams[name] = _Stream(name, shape, dtype, self.config.latency_window)
                st.next_seq = header["seq"]  # so frames dropped before the engine's first step show as a gap
            elif shape != st.shape:
                self._reject("shape_change", f"frames of shape {shape}, the stream started with {st.shape}", st)
                return
            elif dtype != st.dtype:
                self._reject("dtype_change", f"dtype {dtype.str!r}, the stream started with {st.dtype.str!r}", st)
                return
            if not finite:
                self._reject("bad_frames", f"NaN/inf samples in seq {header['seq']}..{header['seq'] + n - 1}; "
                             "dropped", st)
                return
            seq = header["seq"]
            if st.rx_next is not None and seq != st.rx_next:
                if seq > st.rx_next:
                    st.gaps += 1
                    st.frames_missing += seq - st.rx_next
                else:
                    st.restarts += 1
            st.rx_next = seq + n
            st.frames_in += n
            st.messages_in += 1
            # Overflow: drop the oldest (a controller wants the newest frames).
            while st.queue and st.queued + n > self.config.max_queue:
                old = st.queue.popleft()
                st.queued -= old.n
                st.dropped += old.n
            st.queue.append(_Msg(header, frames, t_recv))
            st.queued += n
            self._ready[name] = None
            self._cv.notify()

    # ------------------------------------------------------------------ engine thread
    def _engine_loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cv:
                    if not self._ready:
                        self._cv.wait(_WAIT_S)
                self._work()
        finally:
            self._close(self._pub)

    def _work(self) -> None:
        """Step and publish every stream with pending frames (engine thread)."""
        with self._cv:
            work = []
            for name in self._ready:
                st = self._streams[name]
                work.append((st, st.queue, st.reset_requested))
                st.queue, st.queued, st.reset_requested = collections.deque(), 0, False
            self._ready.clear()
        t_deq = time.time_ns()
        for st, items, reset in work:
            try:
                self._process(st, items, reset, t_deq)
            except Exception as e:  # a bug: count it, log it with the stream, keep serving
                with self._lock:
                    self._reject("internal_error", f"{type(e).__name__}: {e}", st)
                log.exception("rtdenoise service: processing stream %r", st.name)

    def _process(self, st: _Stream, items, reset: bool, t_deq: int) -> None:
        if st.state is None:
            st.state = self.engine.new_state(1)
        if reset:
            self._restart(st, time.time_ns())
            st.resets += 1
        run: list[_Msg] = []
        for m in items:
            if run and (m.seq != run[-1].seq + run[-1].n or m.fs != run[-1].fs or m.meta != run[-1].meta):
                self._run(st, run, t_deq)
                run = []
            run.append(m)
        if run:
            self._run(st, run, t_deq)

    def _restart(self, st: _Stream, t_recv: int) -> None:
        """Publish what is owed for the frames so far, then forget them (a fresh context).

        ``t_recv``: arrival of what caused it (the message after a gap, or the command)."""
        k, owed = self.lag, len(st.pending_t)
        if k and owed and st.last_frame is not None:
            t0 = time.perf_counter_ns()
            y = self.engine.step(np.repeat(st.last_frame[None], k, axis=0), st.state)  # as offline ends
            t1 = time.perf_counter_ns()
            self._publish(st, y[k - owed:], None, t1 - t0, meta=st.last_meta, fs=st.last_fs, t_recv=t_recv)
        self.engine.reset(st.state)
        st.pending_t.clear()
        st.out_index = 0
        st.next_seq, st.fresh = None, True
        st.last_frame = None
        st.warm = False

    def _run(self, st: _Stream, run: list[_Msg], t_deq: int) -> None:
        """Step the engine on contiguous messages as one chunk and publish the outputs."""
        seq0 = run[0].seq
        if st.next_seq is not None and seq0 != st.next_seq:
            jump = seq0 - st.next_seq  # > 0: frames missing (lost upstream or dropped here)
            self._restart(st, run[0].t_recv_ns)
            st.pending_gap += max(0, jump)
        if st.fresh:  # the first frame of a context: outputs start here
            st.out_seq, st.fresh = seq0, False
        x = run[0].frames if len(run) == 1 else np.concatenate([m.frames for m in run])
        n = x.shape[0]
        with self._lock:
            for m in run:
                st.queue_ms.append((t_deq - m.t_recv_ns) / 1e6)
        seen = int(st.state.seen[0])
        t0 = time.perf_counter_ns()
        try:
            if n <= _MAX_STEP:
                y = self.engine.step(x, st.state)
            else:  # bounded memory whatever the backlog or the message size: check all, then step in pieces
                self.engine.check_frames(x)
                y = np.concatenate([self.engine.step(x[i:i + _MAX_STEP], st.state) for i in range(0, n, _MAX_STEP)])
        except (ValueError, TypeError) as e:  # the engine refused the chunk before touching state
            with self._lock:
                st.discarded += n
                self._reject("bad_frames", f"seq {seq0}..{seq0 + n - 1}: {e}", st)
            return
        t1 = time.perf_counter_ns()
        st.next_seq = seq0 + n
        st.last_frame = np.array(x[-1])
        st.last_fs, st.last_meta = run[-1].fs, run[-1].meta
        for m in run:
            st.pending_t.extend(m.frame_times())
        owed_before = max(0, self.lag - seen)  # outputs that belong to frames before the reset
        valid = max(0, n - owed_before)
        if valid:
            self._publish(st, y[n - valid:], run, t1 - t0, meta=run[-1].meta, fs=run[-1].fs)
        else:
            st.warm = bool(self.engine.warm(st.state)[0])

    def _publish(self, st: _Stream, y: np.ndarray, run: list[_Msg] | None, engine_ns: int, *, meta, fs,
                 t_recv: int | None = None) -> None:
        """Publish outputs ``y`` (m, W) for the next m owed frames. ``run``: the messages
        whose arrival produced them (None for a flush), for ``t_recv_ns`` and latencies."""
        m = y.shape[0]
        times = [st.pending_t.popleft() for _ in range(m)]
        st.warm = bool(self.engine.warm(st.state)[0])
        # The header's warm speaks for every frame of the message: its first output frame
        # (index out_index since the reset) had seen out_index + lag + 1 inputs.
        warm = st.out_index + self.lag + 1 >= self.engine.receptive_field + self.lag
        if run:
            t_recv = min(x.t_recv_ns for x in run)  # the oldest: latency of the worst frame
        header = {"stream": st.name, "seq": st.out_seq, "t_ns": times[0], "t_recv_ns": t_recv,
                  "lag": self.lag, "model": self.engine.name, "gap": st.pending_gap, "warm": bool(warm)}
        if fs is not None:
            header["fs"] = fs
        if meta is not None:
            header["meta"] = meta
        y = np.ascontiguousarray(y, dtype="<f4")
        t_p0 = time.perf_counter_ns()
        header["t_pub_ns"] = t_pub = time.time_ns()
        parts = wire.encode_denoised(header, y)
        st.out_seq += m
        st.out_index += m
        st.pending_gap = 0
        with self._lock:  # counted before the send, so a consumer never sees more than status says
            st.frames_out += m
            st.messages_out += 1
            st.engine_ms.append(engine_ns / 1e6)
            for x in run or ():
                st.latency_ms.append((t_pub - x.t_recv_ns) / 1e6)
        self._pub.send_multipart(parts, copy=y.nbytes < COPY_THRESHOLD)
        t_p1 = time.perf_counter_ns()
        with self._lock:
            st.publish_ms.append((t_p1 - t_p0) / 1e6)

    # ------------------------------------------------------------------ control thread
    def _control_loop(self) -> None:
        sock = self._rep
        try:
            while not self._stop.is_set():
                if not sock.poll(int(_WAIT_S * 1000), zmq.POLLIN):
                    continue
                parts = sock.recv_multipart()
                stop_after = False
                try:
                    reply, stop_after = self._handle(parts)
                except Exception as e:  # never crash on a request
                    log.exception("rtdenoise service: control request %r", parts[:1])
                    reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
                sock.send(json.dumps(reply, default=str).encode())
                if stop_after:
                    self._stop.set()
        finally:
            self._close(sock, _CONTROL_LINGER_MS)

    def _handle(self, parts: list[bytes]) -> tuple[dict, bool]:
        if len(parts) != 1:
            return {"ok": False, "error": f"a request is one message part, got {len(parts)}"}, False
        try:
            text = parts[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            return {"ok": False, "error": "request is not UTF-8"}, False
        if text.startswith("{"):
            try:
                req = json.loads(text)
            except json.JSONDecodeError as e:
                return {"ok": False, "error": f"request is not valid JSON: {e}"}, False
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                return {"ok": False, "error": 'a JSON request is an object with a "cmd" string'}, False
        else:  # plain text: "status", "reset rig1", "stop"
            words = text.split(None, 1)
            req = {"cmd": words[0] if words else ""}
            if len(words) > 1:
                req["stream"] = words[1]
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, **self.stats()}, False
        if cmd == "reset":
            stream = req.get("stream")
            if stream is not None and not isinstance(stream, str):
                return {"ok": False, "error": f"reset takes a stream name (a string), got {stream!r}"}, False
            return self._request_reset(stream), False
        if cmd == "stop":
            return {"ok": True, "stopping": True}, True
        return {"ok": False, "error": f"unknown command {cmd!r}; commands: status, reset [stream], stop"}, False

    def _request_reset(self, name: str | None) -> dict:
        with self._cv:
            if name is None:
                names = list(self._streams)
            elif name in self._streams:
                names = [name]
            else:
                return {"ok": False, "error": f"no stream {name!r}; streams: {sorted(self._streams)}"}
            for s in names:
                self._streams[s].reset_requested = True
                self._ready[s] = None
            self._cv.notify()
        return {"ok": True, "reset": names}

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        """Counters and latencies, global and per stream (what the ``status`` command returns).

        Latencies are ms over the last ``latency_window`` messages: ``latency_ms`` is
        ``t_pub − t_recv`` per input message (service clock), ``stages_ms`` splits it into
        ``queue`` (waiting for the engine), ``engine`` (one step) and ``publish``.

        ``connections`` counts libzmq's connection events per socket (``accepted``,
        ``connected``, ``disconnected``, ``handshake_ok``, ``auth_refused``: a CURVE key not
        authorized, ``handshake_failed``: e.g. a plaintext client against CURVE,
        ``reconnect``: the input connected again after libzmq dropped it).
        ``security`` says whether CURVE is on and how many client keys are authorized.
        """
        with self._lock:
            streams = {name: st.snapshot() for name, st in self._streams.items()}
            rejected = dict(self._rejected)
            messages_in = self._messages_in
            connections = {name: dict(c) for name, c in self._connections.items()}
        for s in streams.values():
            s["latency_ms"] = _percentiles(s["latency_ms"])
            s["stages_ms"] = {k: _percentiles(v) for k, v in s["stages_ms"].items()}
        end = self._t_stop if self._t_stop is not None else time.monotonic()
        return {
            "model": self.engine.name, "backend": self.engine.backend, "lag": self.lag,
            "receptive_field": int(self.engine.receptive_field),
            "frame_shape": list(self.engine.frame_shape),
            "uptime_s": round(end - self._t_start, 3) if self._t_start is not None else 0.0,
            "addresses": dict(self.addresses), "max_queue": self.config.max_queue,
            "max_streams": self.config.max_streams, "max_header_bytes": self.config.max_header_bytes,
            "max_payload_bytes": self.config.max_payload_bytes, "messages_in": messages_in,
            "rejected": sum(rejected.values()), "rejected_by_reason": rejected,
            "connections": connections,
            "security": {"curve": self._curve is not None,
                         "authorized_keys": self._curve.n_authorized if self._curve else 0},
            "n_streams": len(streams), "streams": streams,
            "running": bool(self._threads) and not self._stop.is_set(),
        }


# ---------------------------------------------------------------------- functions


def serve(config: ServiceConfig | None = None, *, on_ready: Callable[[Service], None] | None = None,
          handle_signals: bool = True, **overrides) -> dict:
    """Run a :class:`Service` until ``stop`` (control), SIGINT or SIGTERM; return final stats.

    Parameters
    ----------
    config, **overrides
        As for :class:`Service`.
    on_ready : callable, optional
        Called with the running service (e.g. to print its addresses).
    handle_signals : bool
        Stop cleanly on SIGINT/SIGTERM (only from the main thread; restored afterwards).
    """
    svc = Service(config, **overrides)
    old = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: svc.request_stop())
    try:
        svc.start()
        if on_ready is not None:
            on_ready(svc)
        while not svc.wait(0.2):
            pass
    finally:
        stats = svc.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
    if svc._errors:
        raise RuntimeError(f"the service stopped on an internal error: {svc._errors[0]!r}") from svc._errors[0]
    return stats


def control(address: str, command: str = "status", *, stream: str | None = None, timeout: float = 5.0,
            context: zmq.Context | None = None, curve_keys=None) -> dict:
    """Send one control request and return the decoded JSON reply.

    The control protocol: a REQ socket sends one UTF-8 JSON object
    ``{"cmd": "status" | "reset" | "stop", "stream": name (reset only, optional: all)}``
    (plain text ``"status"``, ``"reset rig1"``, ``"stop"`` works too) and gets one JSON
    object back: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

    ``curve_keys``: ``(client_secret_key_file, server_public_key_file)`` for a service
    run with CURVE (see :mod:`rtdenoise.security`); None for plaintext.

    Raises
    ------
    TimeoutError
        No reply within ``timeout`` seconds (no service at ``address``, or a CURVE
        service that refused this client's key?).
    """
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"address must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5557', got {address!r}")
    req: dict = {"cmd": command}
    if stream is not None:
        req["stream"] = stream
    from rtdenoise import security

    keys = security.client_keys(curve_keys)
    sock = (context or zmq.Context.instance()).socket(zmq.REQ)
    try:
        security.apply_client(sock, keys)
        sock.connect(address)
        sock.send(json.dumps(req).encode())
        if not sock.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
            hint = ("; with CURVE: is this client's key in the service's authorized/, and the server key right?"
                    if keys else "; if the service runs with --curve-keys, pass --client-key and --server-key")
            raise TimeoutError(f"no reply from the rtdenoise control socket {address} within {timeout} s; "
                               f"is `rtdenoise serve` running there?{hint}")
        return json.loads(sock.recv().decode())
    finally:
        sock.close(linger=0)


def _ms(p: dict, key: str) -> str:
    v = p.get(key)
    return "-" if v is None else f"{v:.2f}"


def format_status(stats: dict) -> str:
    """A human-readable table of :meth:`Service.stats` (what ``rtdenoise status`` prints)."""
    lines = [
        f"model {stats['model']} ({stats['backend']}, lag {stats['lag']}), up {stats['uptime_s']:.1f} s, "
        f"{stats['n_streams']} stream(s), {stats['messages_in']} messages in, {stats['rejected']} rejected",
    ]
    if stats["rejected_by_reason"]:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(stats["rejected_by_reason"].items())))
    sec = stats.get("security")
    if sec is not None:
        lines.append("security: " + (f"CURVE, {sec['authorized_keys']} authorized client key(s)" if sec["curve"]
                                     else "none (plaintext)"))
    conns = [f"{name} " + " ".join(f"{k}={v}" for k, v in sorted(c.items()))
             for name, c in (stats.get("connections") or {}).items() if c]
    if conns:
        lines.append("connections: " + "; ".join(conns))
    cols = ("stream", "in", "out", "gaps", "missing", "restarts", "dropped", "rejected", "queue", "warm",
            "p50 ms", "p99 ms", "max ms")
    rows = [cols]
    for name, s in sorted(stats["streams"].items()):
        lat = s["latency_ms"]
        rows.append((name, str(s["frames_in"]), str(s["frames_out"]), str(s["gaps"]), str(s["frames_missing"]),
                     str(s["restarts"]), str(s["dropped"]), str(s["rejected"]), str(s["queue_depth"]),
                     "yes" if s["warm"] else "no", _ms(lat, "p50"), _ms(lat, "p99"), _ms(lat, "max")))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
