"""What the live service counts, and how ``status`` reports it.

One lock (:attr:`Stats.lock`) covers every counter, whichever thread writes it: the
receive thread (messages in, rejections, connection events), the engine thread (frames
out, latencies) and the control thread, which reads them all for ``status``. Rejections
and connection events are logged as well, rate-limited: the first 10 of each kind, then
every 1000th.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from rtdenoise.metrics import percentiles
from rtdenoise.stream.sequencer import Inbox, Sequencer
from rtdenoise.stream.sockets import ROLE_OF

__all__ = ["StreamRecord", "Stats"]

# Everything the live service logs goes out under the service's name, whichever stage logs it.
log = logging.getLogger("rtdenoise.stream.service")


def rate_limited(k: int) -> bool:
    """Whether the ``k``-th occurrence of a kind of event goes unlogged: the first 10 are
    logged, then every 1000th (each line carries its count)."""
    return not (k <= 10 or k % 1000 == 0)


class StreamRecord:
    """Everything the service holds for one stream: its format (``shape``, ``dtype``, what
    admission checks), its receive side (``inbox``, the receive thread's), its engine side
    (``seq``, the engine thread's) and its counters; status reads them under the lock."""

    def __init__(self, name: str, shape: tuple, dtype: np.dtype, *, inbox: Inbox, seq: Sequencer, window: int,
                 sender: str | None = None):
        self.name, self.shape, self.dtype, self.sender = name, shape, dtype, sender
        self.inbox, self.seq = inbox, seq
        self.rejected: collections.Counter = collections.Counter()
        self.reset_requested = False
        self.last_arrival = time.monotonic()  # of its latest accepted message (receive thread)
        self.expiring = self.expired = False  # idle: asked to flush / flushed by the engine thread
        self.piece: int | None = None  # most frames the engine thread takes per turn (None: all)
        self.frames_out = self.messages_out = self.discarded = 0
        self.latency_ms = collections.deque(maxlen=window)
        self.queue_ms = collections.deque(maxlen=window)
        self.engine_ms = collections.deque(maxlen=window)
        self.publish_ms = collections.deque(maxlen=window)

    def snapshot(self) -> dict:
        """The stream's counters, latencies as lists (the caller holds the lock)."""
        rx, seq = self.inbox, self.seq
        return {
            "shape": list(self.shape), "dtype": self.dtype.str, "sender": self.sender,
            "frames_in": rx.frames_in, "messages_in": rx.messages_in,
            "frames_out": self.frames_out, "messages_out": self.messages_out,
            "gaps": rx.gaps, "frames_missing": rx.frames_missing, "restarts": rx.restarts,
            "resets": seq.resets, "dropped": rx.dropped, "discarded": self.discarded,
            "rejected": sum(self.rejected.values()), "rejected_by_reason": dict(self.rejected),
            "queue_depth": rx.queued, "queue_limit": rx.max_queue, "in_flight": seq.in_flight, "warm": seq.warm,
            "last_seq": None if rx.next_seq is None else rx.next_seq - 1,
            # copies, taken under the lock; Stats.report turns them into percentiles outside it
            "latency_ms": list(self.latency_ms),
            "stages_ms": {"queue": list(self.queue_ms), "engine": list(self.engine_ms),
                          "publish": list(self.publish_ms)},
        }


class Stats:
    """The service's global counters, and its per-stream records' report.

    Parameters
    ----------
    sockets : iterable of str
        Names of the sockets whose connection events are counted.
    """

    def __init__(self, sockets=("sub", "pub", "control")):
        self.lock = threading.Lock()
        self.messages_in = 0
        self.streams_expired = 0
        self.rejected: collections.Counter = collections.Counter()
        self.connections = {name: collections.Counter() for name in sockets}
        self._log_counts: collections.Counter = collections.Counter()

    def reject(self, reason: str, message: str, stream: StreamRecord | None = None, name: str | None = None, *,
               exc_info: bool | BaseException = False) -> None:
        """Count a rejected message (the caller holds the lock) and log it, rate-limited
        (``exc_info``: with the traceback of the exception being handled, or of this one, for a bug)."""
        self.rejected[reason] += 1
        if stream is not None:
            stream.rejected[reason] += 1
        k = self._log_counts[reason] = self._log_counts[reason] + 1
        if not rate_limited(k):
            where = f"stream {name or (stream.name if stream else '?')!r}: " if (name or stream) else ""
            log.warning("rtdenoise service: rejected a message (%s, #%d): %s%s", reason, k, where, message,
                        exc_info=exc_info)

    def connection(self, name: str, kind: str, *, curve=None, max_msg_bytes: int = 0) -> None:
        """Count a connection event of socket ``name`` (takes the lock) and log it, rate-limited.

        ``curve``: the service's server keys (None: plaintext), for the messages;
        ``max_msg_bytes``: the input's ``ZMQ_MAXMSGSIZE``, named when an input connection closes.
        """
        with self.lock:
            self.connections[name][kind] += 1
            k = self._log_counts[f"{name}.{kind}"] = self._log_counts[f"{name}.{kind}"] + 1
        if rate_limited(k):
            return
        if kind == "auth_refused":
            role = ROLE_OF.get(name, name)
            d = curve.authorized_dir if curve else "authorized"
            where = f"{d}/control/" if role == "control" else f"{d}/ or {d}/{role}/"
            log.warning("rtdenoise service: refused a client on %s (#%d): its CURVE public key may not %s here "
                        "(not in %s)", name, k, role, where)
        elif kind == "handshake_failed":
            log.warning("rtdenoise service: a client on %s failed the handshake (#%d)%s", name, k,
                        ": a plaintext client, or a CURVE client with the wrong server key"
                        if curve else ": a CURVE client against this plaintext service?")
        elif kind == "disconnected" and name == "sub":
            # Info, not warning: a publisher that closes is the usual cause; the count is
            # in status (connections.sub.disconnected) either way.
            log.info(
                "rtdenoise service: an input connection closed (#%d): its publisher closed it, it failed "
                "the handshake, or it sent a message part over %d bytes (max_header_bytes/max_payload_bytes, "
                "ZMQ_MAXMSGSIZE), which libzmq refuses by dropping the connection; frames lost with it show "
                "as a seq gap", k, max_msg_bytes)

    def report(self, streams: dict[str, StreamRecord]) -> dict:
        """``messages_in``, ``rejected``, ``rejected_by_reason``, ``connections``, ``n_streams``,
        ``streams_expired`` and ``streams`` of ``status`` (takes the lock to copy, computes percentiles outside it).

        Latencies are ms over the records' windows, as ``{"n", "p50", "p90", "p99", "max"}``.
        """
        with self.lock:
            snaps = {name: st.snapshot() for name, st in streams.items()}
            rejected = dict(self.rejected)
            messages_in, expired = self.messages_in, self.streams_expired
            connections = {name: dict(c) for name, c in self.connections.items()}
        for s in snaps.values():
            s["latency_ms"] = percentiles(s["latency_ms"], digits=4)
            s["stages_ms"] = {k: percentiles(v, digits=4) for k, v in s["stages_ms"].items()}
        return {"messages_in": messages_in, "rejected": sum(rejected.values()), "rejected_by_reason": rejected,
                "connections": connections, "n_streams": len(snaps), "streams_expired": expired, "streams": snaps}
