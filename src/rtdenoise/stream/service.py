"""The live service: receive frames, denoise each stream causally, publish, answer control.

:class:`Service` only wires stages, each in its own module and testable without the others::

    [SUB] receive thread ─▶ wire.decode ─▶ admission.admit ─▶ sequencer.Inbox (per stream, bounded)
                                                                   │
    [PUB] ◀─ publish ◀─ sequencer.Sequencer (per stream: engine.step / flush) ◀─ engine thread
                        batch.Batcher (streams of one group with new frames: one engine call)
    [REP] control thread: control.answer / handle (status, reset, stop)
    sockets.ServiceSockets: the three sockets, their monitors, CURVE    stats.Stats: counters, one lock

Each thread owns exactly one ZeroMQ socket (sockets are not thread-safe).

- The **receive thread** drains the SUB socket continuously and never waits for the engine
  thread. It decodes every message, admits it against its stream (first message fixes shape
  and dtype; NaN/inf refused by the engine's own check, the only one the frames get),
  counts rejections by reason, and appends the message to the stream's queue, which holds
  at most ``max_queue`` frames: on overflow the **oldest** are dropped (``dropped``), the
  engine then sees a ``seq`` jump and flags it in the next output's ``gap``.
- The **engine thread** takes *all* pending messages of a stream at once; the stream's
  sequencer steps the engine on each run of contiguous messages as one chunk (a backlog is
  worked off in big, cheap steps) and each ``denoised/<stream>`` message is published as
  soon as it is computed. Each stream's state is a slot of its group's (streams of one
  frame shape, :mod:`rtdenoise.stream.batch`): where several streams of a group have a run
  of the same length this turn, and one call measures cheaper than one per stream, they
  are stepped in one engine call. Gaps, restarts, the lag flush and the output headers are the
  sequencer's (:mod:`rtdenoise.stream.sequencer`): every input frame gets exactly one
  output frame, and ``frames_in == frames_out + dropped + discarded + queue_depth + in_flight``.
- The **control thread** answers JSON requests on a REP socket (see :func:`control`).
- **Latency mode** (``spin``): one thread does the receive and the engine thread's work,
  polling the input without ever sleeping, so no message waits for a thread to wake or
  for a hand-over between threads; it keeps one CPU core busy all the time.
- The receive thread also reads libzmq's **socket monitors** of all three sockets and counts
  connection events per socket (``connections`` in status): accepted and closed
  connections, failed handshakes (a refused CURVE key, a plaintext client against a CURVE
  service). A connecting input whose connection libzmq drops for a protocol error (e.g. a
  message part over ``ZMQ_MAXMSGSIZE``) is connected again: libzmq would never retry it.

Security: by default the data sockets bind to loopback and the control socket is a local
IPC socket only this user can reach (a plaintext ``tcp://`` control needs
``allow_tcp_control``). With ``curve_keys`` (a directory made by ``rtdenoise keys``, see
:mod:`rtdenoise.security`) the service is the CURVE server on all three sockets, whichever
side binds: traffic is encrypted and each socket admits only the keys allowed its role
(publish, subscribe, control); a publisher's key may be limited to stream names. Binding
anything but loopback without CURVE warns. Each message's sender (its CURVE key, else its
peer address) is known, so ``max_streams_per_sender`` keeps one sender from filling the
stream table.

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
                 pub="tcp://127.0.0.1:*", control="ipc://*") as svc:
        print(svc.addresses)            # publishers connect to "sub", consumers to "pub"
        print(control(svc.control_address, "status")["streams"])

From a shell: ``rtdenoise serve --model M`` and ``rtdenoise status``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
import threading
import time
from typing import Callable

import numpy as np
import zmq

from rtdenoise import security
from rtdenoise.stream import admission, wire
from rtdenoise.stream.admission import SERVICE_REASONS
from rtdenoise.stream.batch import Batcher
from rtdenoise.stream.config import ServiceConfig
from rtdenoise.stream.control import answer, control, format_status
from rtdenoise.stream.sequencer import MAX_STEP, Chunk, Inbox, Output, Refused, Sequencer
from rtdenoise.stream.sockets import RETRYING, ServiceSockets
from rtdenoise.stream.stats import Stats, StreamRecord

__all__ = ["ServiceConfig", "Service", "serve", "control", "format_status", "SERVICE_REASONS"]

log = logging.getLogger(__name__)

_WAIT_S = 0.05  # how often idle threads look at the stop flag
_JOIN_S = 5.0
_FINISH_S = 2.0  # at stop: at most this long stepping what was admitted, before the owed outputs leave
_FLUSH_GRACE_S = 0.2  # at stop: time for the last outputs to leave before the output socket closes
_RECONNECT_AFTER_S = 0.5  # an input disconnect with no "retried" from libzmq by then: connect it ourselves
_DRAIN_MAX = 1000  # messages read per wake-up before looking at the monitors and the stop flag again
_WARM_EVERY_S = 0.001  # spin: how often an idle engine is stepped on scratch to stay warm
_WARM_MAX_S = 0.002  # spin: only a model whose step is cheaper than this is kept warm


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
        curve = None
        if config.curve_keys is not None:  # missing or bad keys fail here, before the model loads
            curve = security.load_server_keys(config.curve_keys)
        if engine is None:
            from rtdenoise.backends import load_engine

            # Engines take `threads` (torch: process-wide intra-op; ORT: the session's).
            kw = {} if config.threads is None else {"threads": config.threads}
            engine = load_engine(config.model, backend=config.backend, follow_motion=config.follow_motion, **kw)
        self.engine = engine
        self.lag = int(engine.lag)
        for shape in config.warm_shapes:  # before any socket is bound
            try:
                engine.check_shape(shape)
            except ValueError as e:
                raise ValueError(f"warm shape {'x'.join(map(str, shape))}: not a frame of model {engine.name}: {e}") from None
        self._limits = admission.Limits(tuple(engine.frame_shape), config.max_streams, engine.name,
                                        config.max_header_bytes, config.max_payload_bytes,
                                        check_shape=getattr(engine, "check_shape", None),
                                        max_streams_per_sender=config.max_streams_per_sender)
        # A CURVE sender's User-Id is its z85 key: its name (for status) and the streams it may publish to.
        self._senders: dict[str, tuple[str, tuple[str, ...] | None]] = {} if curve is None else {
            k.decode(): (name, curve.streams.get(k)) for k, name in curve.names.items()}
        self._sender_prop = "Peer-Address" if curve is None else "User-Id"
        if config.max_streams_per_sender is not None and curve is None:
            log.warning("rtdenoise service: without CURVE a sender is its address: every publisher on one machine "
                        "(or behind one proxy) shares max_streams_per_sender=%d", config.max_streams_per_sender)
        self._stats = Stats(ServiceSockets.NAMES)
        self._lock = self._stats.lock  # one lock for the counters and the work handed between threads
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        # Only the receive thread adds streams: it reads the table without the lock.
        self._streams: dict[str, StreamRecord] = {}
        self._ready: dict[str, None] = {}  # insertion-ordered set of streams with work
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._reconnect_due: float | None = None  # receive thread only: when to connect the input again
        # Engine thread only: each stream's state is a slot of its group's, stepped alone or with the group.
        self._batcher = Batcher(engine, config.max_batch)
        self._warm: np.ndarray | None = None  # spin: the latest frame (1, *shape), to keep the engine warm on
        self._next_idle_scan = 0.0  # receive thread only
        self.epoch = secrets.randbits(63)  # in every output header: a consumer tells a restart from a gap
        self._t_start: float | None = None
        self._t_stop: float | None = None
        self._sockets = ServiceSockets(
            sub=config.sub, bind_sub=config.bind_sub, pub=config.pub, control=config.control,
            subscribe=config.subscribe, rcvhwm=config.rcvhwm,
            max_msg_bytes=max(config.max_header_bytes, config.max_payload_bytes), curve=curve, context=context)
        self.addresses: dict[str, str] = self._sockets.addresses

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
        if self._sockets.sub is None or self._sockets.sub.closed:
            raise RuntimeError("Service is closed; make a new one")
        if self.config.warm_shapes or getattr(self.engine, "gpu", False):
            try:
                self._warm_up()
            except BaseException:  # e.g. no memory for the largest group: nothing may stay bound
                self._sockets.close_all()
                raise
        self._t_start = time.monotonic()
        loops = ((("spin", self._spin_loop),) if self.config.spin else
                 (("receive", self._receive_loop), ("engine", self._engine_loop)))
        for name, target in (*loops, ("control", self._control_loop)):
            t = threading.Thread(target=self._guard, args=(name, target), name=f"rtdenoise-{name}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def _warm_up(self) -> None:
        """Step scratch states before the first message, at each of ``config.warm_shapes`` and
        each size a group of them grows through (1, 2, 4, ... ``max_batch``); with none given, a
        GPU engine once at a small frame. The first CUDA step of a process loads its kernels
        (about 0.2 s on an H200), and each new input shape sets up its own (not measured per
        shape here): without this, on a stream's first frames. Each stream's own first step
        still captures its CUDA graph (two eager steps and a capture)."""
        shapes = self.config.warm_shapes or (tuple(64 if d is None else d for d in self.engine.frame_shape),)
        for shape in shapes:
            for k in self._batcher.sizes(shape) if self.config.warm_shapes else [1]:
                x = np.full((k, 1, *shape), 100.0, dtype=np.float32)
                self.engine.step(x, self.engine.new_state(k), checked=True)

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
            self._sockets.close_all()  # threads close their own; this catches a service never started
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

    # ------------------------------------------------------------------ receive thread
    def _receive_loop(self) -> None:
        poller = self._receive_poller()
        try:
            while not self._stop.is_set():
                self._receive(poller, int(_WAIT_S * 1000))
        finally:
            self._sockets.close("sub")

    def _receive_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self._sockets.sub, zmq.POLLIN)
        for mon in self._sockets.monitors.values():
            poller.register(mon, zmq.POLLIN)
        return poller

    def _receive(self, poller: zmq.Poller, timeout_ms: int) -> None:
        """One turn of the receive side: wait up to ``timeout_ms`` for messages or connection
        events, then count the events and decode, admit and queue what is there."""
        sock, monitors = self._sockets.sub, self._sockets.monitors
        ready = dict(poller.poll(timeout_ms))
        if len(ready) > (sock in ready):  # a monitor has events
            for name, mon in monitors.items():
                if mon in ready:
                    self._on_events(name)
        self._reconnect_if_due()
        self._expire_idle()
        if sock not in ready:
            return
        for _ in range(_DRAIN_MAX):  # drain what is there (bounded: a flood never blinds the loop)
            try:
                parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t_recv = time.time_ns()
            sender, allowed = self._sender(parts[0])
            try:
                _, header, frames = self._limits.decode(parts)
            except wire.WireError as e:
                with self._lock:
                    self._stats.messages_in += 1
                    self._stats.reject(e.reason, str(e))
                continue
            try:
                self._admit(header, frames, t_recv, sender, allowed)
            except Exception as e:  # a bug: count it, keep receiving
                with self._lock:
                    self._stats.reject("internal_error", f"{type(e).__name__}: {e}", name=header.get("stream"),
                                       exc_info=True)

    def _spin_loop(self) -> None:
        """``spin``: one thread receives and steps, polling without ever sleeping; no hand-over
        between threads and no wake-up on the way from a message to its output.

        While idle it also keeps the engine warm: a step after 10 ms of idleness took 0.7-1.1 ms
        against 0.2 ms back to back (caches, branch predictors, the core's clock), so every
        :data:`_WARM_EVERY_S` it steps a scratch state on the latest frame (its output is
        discarded; no stream's state is touched). Only for a cheap model (a step under
        :data:`_WARM_MAX_S`): warming a large image model would delay the frame it waits for.
        Never a GPU engine: its steps do not run on this core, and on an H200 warming a
        512 × 512 model (0.8 ms a step) raised the live p50 from 3.8 to 36 ms.
        """
        poller = self._receive_poller()
        scratch: dict[tuple, object] = {}  # frame shape -> a state no stream uses
        next_warm = 0.0
        try:
            while not self._stop.is_set():
                self._receive(poller, 0)
                if self._ready:
                    self._work()
                    next_warm = time.perf_counter() + _WARM_EVERY_S
                elif self._warm is not None and time.perf_counter() >= next_warm:
                    frame = self._warm
                    st = scratch.get(frame.shape) or scratch.setdefault(frame.shape, self.engine.new_state(1))
                    t0 = time.perf_counter()
                    self.engine.step(frame, st, checked=True)
                    took = time.perf_counter() - t0
                    if took > _WARM_MAX_S:  # too costly to keep warm: stop trying for this frame
                        self._warm = None
                    next_warm = time.perf_counter() + _WARM_EVERY_S
            self._finish()
        finally:
            self._sockets.close("sub")
            self._sockets.close("pub")

    def _sender(self, part: zmq.Frame) -> tuple[str | None, tuple[str, ...] | None]:
        """Who sent a message (its CURVE key's name, else its peer address), and the stream-name
        prefixes it may publish to (None: any)."""
        try:
            who = part.get(self._sender_prop)
        except zmq.ZMQError:  # no such property on this transport (inproc)
            return None, None
        if self._senders:
            return self._senders.get(who, (who, None))
        return who, None

    def _on_events(self, name: str) -> None:
        """Count one socket's connection events; note when libzmq gave up on the input."""
        c = self.config
        for kind in self._sockets.events(name):
            if kind == RETRYING:  # libzmq connects the input again by itself: nothing for us to do
                self._reconnect_due = None
                continue
            self._stats.connection(name, kind, curve=self._sockets.curve,
                                   max_msg_bytes=max(c.max_header_bytes, c.max_payload_bytes))
            if kind == "disconnected" and name == "sub" and not c.bind_sub:
                # libzmq never retries a connection it closed for a protocol error, and says
                # "retried" at once after any other: reconnect only when it stays silent.
                self._reconnect_due = time.monotonic() + _RECONNECT_AFTER_S

    def _reconnect_if_due(self) -> None:
        if self._reconnect_due is not None and time.monotonic() >= self._reconnect_due:
            self._reconnect_due = None
            self._sockets.reconnect_input()
            with self._lock:
                self._stats.connections["sub"]["reconnect"] += 1

    def _expire_idle(self) -> None:
        """Forget streams idle for ``stream_idle_s`` (receive thread, the table's only writer):
        first the engine thread flushes what they owe, then they leave the table."""
        idle, now = self.config.stream_idle_s, time.monotonic()
        if not idle or now < self._next_idle_scan:
            return
        self._next_idle_scan = now + min(1.0, idle / 4)
        with self._cv:
            for name, st in list(self._streams.items()):
                if now - st.last_arrival < idle:
                    continue
                if st.expired and name not in self._ready:
                    del self._streams[name]
                    self._stats.streams_expired += 1
                    log.info("rtdenoise service: stream %r forgotten after %.0f s without a message", name, idle)
                elif not st.expiring:
                    st.expiring = True
                    self._ready[name] = None
                    self._cv.notify()

    def _admit(self, header: dict, frames: np.ndarray, t_recv: int, sender: str | None = None,
               allowed: tuple[str, ...] | None = None) -> None:
        """Admit a decoded message (the frames' only check) and queue it (receive thread)."""
        verdict = admission.admit(header, frames, self._streams, self._limits, check_frames=self.engine.check_frames,
                                  sender=sender, allowed=allowed)
        name = header["stream"]
        with self._cv:
            self._stats.messages_in += 1
            st = self._streams.get(name)
            if verdict.new:
                # first_seq: so frames dropped before the engine's first step show as a gap
                c = self.config  # the queue's bound in frames: max_queue, and max_queue_bytes of this stream's frames
                limit = max(1, min(c.max_queue, c.max_queue_bytes // max(1, frames[0].nbytes)))
                st = self._streams[name] = StreamRecord(
                    name, tuple(header["shape"]), frames.dtype, inbox=Inbox(limit),
                    seq=Sequencer(self.engine, name, first_seq=header["seq"], checked=True, epoch=self.epoch),
                    window=self.config.latency_window, sender=sender)
                st.piece = min(MAX_STEP, self.engine.max_step(st.shape))  # frames per engine turn
            if not verdict.accepted:  # a refused message does not keep a stream alive
                self._stats.reject(verdict.reason, verdict.message, st, name=name)
                return
            st.last_arrival, st.expiring, st.expired = time.monotonic(), False, False
            st.inbox.put(Chunk(header, frames, t_recv))
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
            self._finish()
        finally:
            self._sockets.close("pub")

    def _finish(self) -> None:
        """At stop, before the output closes (engine thread): step what was admitted and not
        stepped yet, then publish what each stream still owes (a lookahead model's last ``lag``
        frames), as idle expiry does, so a recording's last second is not lost with the service.
        Stepping stops after :data:`_FINISH_S`; what is left then is counted as discarded."""
        deadline = time.monotonic() + _FINISH_S
        while self._ready and time.monotonic() < deadline:
            self._work()
        with self._cv:
            streams = [(st, sum(c.n for c in st.inbox.take())) for st in self._streams.values() if not st.expired]
            self._ready.clear()
        sent = False
        for st, left in streams:
            try:
                if left:
                    self._emit(st, Refused(left, f"{left} frames not stepped within {_FINISH_S:g} s of the stop",
                                           reason="stopped"))
                out = st.seq.end(time.time_ns())
                self._emit(st, out)
                sent |= isinstance(out, Output)
            except Exception as e:  # noqa: BLE001 - one stream's failure is its own
                self._internal_error(st, e)
        if sent:  # libzmq gives no word of delivery, and a process that exits drops what it has queued
            time.sleep(_FLUSH_GRACE_S)

    def _work(self) -> None:
        """Step and publish every stream with pending frames (engine thread): streams of one
        group with one run of the same length each in one engine call where that pays
        (:mod:`rtdenoise.stream.batch`), the others one by one."""
        with self._cv:
            work = []
            for name in self._ready:  # one piece per stream per round: a huge message takes turns
                st = self._streams[name]
                work.append((st, st.inbox.take(st.piece), st.reset_requested, st.expiring and not st.expired))
                st.reset_requested = False
            self._ready.clear()
            for st, *_ in work:
                if st.inbox.queued:  # the rest of a big message: after every other stream's turn
                    self._ready[st.name] = None
        t_deq = time.time_ns()
        turn = []
        for st, items, reset, _ in work:
            try:
                if items:  # a slot of its group (again, after it went idle); on failure it steps on a state of its own
                    self._batcher.join(st.seq, st.shape)
            except Exception as e:  # noqa: BLE001 - e.g. no memory to grow the group: counted, the frames still stepped
                self._internal_error(st, e)
            try:
                if reset:
                    self._emit(st, st.seq.reset(time.time_ns()))
            except Exception as e:  # a bug: count it, log it (rate-limited) with the stream, keep serving
                self._internal_error(st, e)
            if items:
                with self._lock:
                    for m in items:
                        st.queue_ms.append((t_deq - m.t_recv_ns) / 1e6)
                turn.append((st, items))
        together, alone = self._batcher.plan([(st.seq, items) for st, items in turn])
        for idx in together:
            record = {turn[i][0].seq: turn[i][0] for i in idx}
            try:
                for seq, out in self._batcher.step([(turn[i][0].seq, turn[i][1]) for i in idx]):
                    try:  # one stream's failure to publish is its own
                        self._emit(record[seq], out)
                    except Exception as e:
                        self._internal_error(record[seq], e)
            except Exception as e:
                for st in record.values():
                    self._internal_error(st, e)
        for i in alone:
            st, items = turn[i]
            try:
                self._feed(st, items)
            except Exception as e:
                self._internal_error(st, e)
        for st, items, _, expire in work:
            if not expire or items:
                continue
            try:  # idle: flush what it owes and free its slot; the receive thread then forgets it
                self._emit(st, st.seq.end(time.time_ns()))
                with self._lock:
                    st.expired = st.expiring  # unless a message came meanwhile
                if st.expired:
                    self._batcher.leave(st.seq)
            except Exception as e:
                self._internal_error(st, e)

    def _internal_error(self, st: StreamRecord, e: Exception) -> None:
        with self._lock:
            self._stats.reject("internal_error", f"{type(e).__name__}: {e}", st, exc_info=True)

    def _feed(self, st: StreamRecord, items) -> None:
        """Step one stream alone on its chunks and publish each output as it is computed."""
        t0 = time.perf_counter()
        for out in st.seq.feed(items):
            self._emit(st, out)
        if self.config.spin and not getattr(self.engine, "gpu", False):  # what the spin loop keeps warm, if it is cheap
            cheap = time.perf_counter() - t0 < _WARM_MAX_S * len(items)
            self._warm = np.array(items[-1].frames[-1:]) if cheap else None

    def _emit(self, st: StreamRecord, out: Output | Refused | None) -> None:
        """Publish an output, or count the frames the sequencer could not give one."""
        if isinstance(out, Refused):
            with self._lock:
                st.discarded += out.n
                self._stats.reject(out.reason, out.message, st, exc_info=out.error or False)
        elif out is not None:
            self._publish(st, out)

    def _publish(self, st: StreamRecord, out: Output) -> None:
        """Send one output; one that cannot be sent is counted as discarded with its reason,
        and the stream's next output flags it in ``gap`` (its ``seq`` stays the input's)."""
        header, y = out.header, out.frames
        t_p0 = time.perf_counter_ns()
        header["t_pub_ns"] = t_pub = time.time_ns()
        try:  # the sequencer made sure y is finite (its step and its flush): nothing to check again here
            parts = wire.encode_denoised(header, y)
        except Exception as e:  # noqa: BLE001 - every failure is counted, none shifts a seq
            st.seq.lost(y.shape[0])
            with self._lock:
                st.discarded += y.shape[0]
                self._stats.reject("internal_error", f"seq {header['seq']}..{header['seq'] + y.shape[0] - 1} not sent: "
                                   f"{type(e).__name__}: {e}", st)
            return
        with self._lock:  # counted before the send, so a consumer never sees more than status says
            st.frames_out += y.shape[0]
            st.messages_out += 1
            st.engine_ms.append(out.engine_ns / 1e6)
            for x in out.chunks or ():
                st.latency_ms.append((t_pub - x.t_recv_ns) / 1e6)
        self._sockets.pub.send_multipart(parts, copy=False)  # pyzmq copies parts under its copy_threshold
        t_p1 = time.perf_counter_ns()
        with self._lock:
            st.publish_ms.append((t_p1 - t_p0) / 1e6)

    # ------------------------------------------------------------------ control thread
    def _control_loop(self) -> None:
        try:
            answer(self._sockets.control, self._stop, status=self.stats, reset=self._request_reset, wait_s=_WAIT_S)
        finally:
            self._sockets.close("control")

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
        report = self._stats.report(self._streams)
        end = self._t_stop if self._t_stop is not None else time.monotonic()
        curve = self._sockets.curve
        return {
            "model": self.engine.name, "backend": self.engine.backend, "lag": self.lag, "epoch": self.epoch,
            "receptive_field": int(self.engine.receptive_field),
            "frame_shape": list(self.engine.frame_shape),
            "uptime_s": round(end - self._t_start, 3) if self._t_start is not None else 0.0,
            "addresses": dict(self.addresses), "max_queue": self.config.max_queue,
            "max_queue_bytes": self.config.max_queue_bytes,
            "max_streams": self.config.max_streams, "max_header_bytes": self.config.max_header_bytes,
            "max_payload_bytes": self.config.max_payload_bytes, "messages_in": report["messages_in"],
            "rejected": report["rejected"], "rejected_by_reason": report["rejected_by_reason"],
            "connections": report["connections"],
            "security": {"curve": curve is not None, "authorized_keys": curve.n_authorized if curve else 0,
                         "roles": curve.summary() if curve else None,
                         "control": "curve" if curve else self.addresses["control"].split("://")[0]},
            "max_streams_per_sender": self.config.max_streams_per_sender, "spin": self.config.spin,
            "batch": self._batcher.stats(),
            "n_streams": report["n_streams"], "streams_expired": report["streams_expired"],
            "stream_idle_s": self.config.stream_idle_s, "streams": report["streams"],
            "running": bool(self._threads) and not self._stop.is_set(),
        }


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

    Raises
    ------
    RuntimeError
        A thread of the service failed (from :meth:`Service.stop`).
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
        try:
            stats = svc.stop()
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
    return stats
