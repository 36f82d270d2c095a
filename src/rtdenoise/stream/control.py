"""The control protocol of the live service: requests and replies, the client helper, the status table.

A REQ socket sends one UTF-8 JSON object ``{"cmd": "status" | "reset" | "stop", "stream":
name (reset only, optional: all)}`` (plain text ``"status"``, ``"reset rig1"``, ``"stop"``
works too) and gets one JSON object back: ``{"ok": true, ...}`` or ``{"ok": false,
"error": "..."}``. Control travels on its own socket (the service's REP), never mixed with
data.

- :func:`handle` answers one request, given what ``status`` and ``reset`` do: no sockets.
- :func:`answer` is the service's control thread: :func:`handle` on every request of its REP.
- :func:`control` is the client: one request, one reply, with a timeout.
- :func:`format_status` prints a ``status`` reply as ``rtdenoise status`` does.

Examples
--------
>>> reply, stop = handle([b"reset rig1"], status=dict, reset=lambda s: {"ok": True, "reset": [s]})
>>> reply, stop
({'ok': True, 'reset': ['rig1']}, False)
>>> handle([b'{"cmd": "stop"}'], status=dict, reset=None)
({'ok': True, 'stopping': True}, True)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

import zmq

from rtdenoise import security
from rtdenoise.stream.sockets import open_client
from rtdenoise.stream.stats import rate_limited

__all__ = ["COMMANDS", "handle", "answer", "control", "format_status"]

log = logging.getLogger("rtdenoise.stream.service")  # what the live service logs, under one name

COMMANDS = ("status", "reset", "stop")


def handle(parts: list[bytes], *, status: Callable[[], dict],
           reset: Callable[[str | None], dict]) -> tuple[dict, bool]:
    """Answer one control request.

    Parameters
    ----------
    parts : list of bytes
        The request as received (one part).
    status : callable
        ``status() -> dict``: the counters (:meth:`Service.stats <rtdenoise.stream.service.Service.stats>`).
    reset : callable
        ``reset(stream or None) -> reply``: ask for a reset of one stream (None: all).

    Returns
    -------
    (reply, stop)
        The JSON-able reply, and whether to stop once it is sent.
    """
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
        return {"ok": True, **status()}, False
    if cmd == "reset":
        stream = req.get("stream")
        if stream is not None and not isinstance(stream, str):
            return {"ok": False, "error": f"reset takes a stream name (a string), got {stream!r}"}, False
        return reset(stream), False
    if cmd == "stop":
        return {"ok": True, "stopping": True}, True
    return {"ok": False, "error": f"unknown command {cmd!r}; commands: status, reset [stream], stop"}, False


def answer(sock: zmq.Socket, stop: threading.Event, *, status: Callable[[], dict],
           reset: Callable[[str | None], dict], wait_s: float = 0.05) -> None:
    """Answer the requests arriving on REP ``sock`` until ``stop`` is set (a ``stop`` request
    sets it once its reply is sent). A request that raises gets an error reply (logged,
    rate-limited); the loop goes on."""
    errors = 0
    while not stop.is_set():
        if not sock.poll(int(wait_s * 1000), zmq.POLLIN):
            continue
        parts = sock.recv_multipart()
        stop_after = False
        try:
            reply, stop_after = handle(parts, status=status, reset=reset)
        except Exception as e:  # never crash on a request
            errors += 1
            if not rate_limited(errors):
                log.exception("rtdenoise service: control request %r (error #%d)", parts[:1], errors)
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        sock.send(json.dumps(reply, default=str).encode())
        if stop_after:
            stop.set()


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
    keys = security.client_keys(curve_keys)
    ms = max(0, int(timeout * 1000))
    # SNDTIMEO: a REQ whose only connection failed its handshake (a refused CURVE key) has no
    # pipe to send on, and would block in send() for ever.
    sock, _ = open_client(zmq.REQ, address, curve_keys=keys, context=context, options=[(zmq.SNDTIMEO, ms)])
    try:
        t0 = time.monotonic()
        try:
            sock.send(json.dumps(req).encode())
        except zmq.Again:
            sent = False
        else:
            sent = sock.poll(max(0, ms - int((time.monotonic() - t0) * 1000)), zmq.POLLIN)
        if not sent:
            hint = ("; with CURVE: is this client's key in the service's authorized/control/, and the server key right?"
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
    """A human-readable table of :meth:`Service.stats <rtdenoise.stream.service.Service.stats>`
    (what ``rtdenoise status`` prints)."""
    lines = [
        f"model {stats['model']} ({stats['backend']}, lag {stats['lag']}), up {stats['uptime_s']:.1f} s, "
        f"{stats['n_streams']} stream(s), {stats['messages_in']} messages in, {stats['rejected']} rejected"
        + (f", {stats['streams_expired']} idle stream(s) forgotten" if stats.get("streams_expired") else ""),
    ]
    if stats["rejected_by_reason"]:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(stats["rejected_by_reason"].items())))
    sec = stats.get("security")
    if sec is not None:
        if sec["curve"]:
            roles = sec.get("roles") or {}
            by_role = ", ".join(f"{k} {v}" for k, v in roles.items() if k != "stream_limited")
            limited = f", {roles['stream_limited']} limited to streams" if roles.get("stream_limited") else ""
            lines.append(f"security: CURVE, {sec['authorized_keys']} authorized client key(s)"
                         + (f" ({by_role}{limited})" if by_role else ""))
        else:
            lines.append("security: none (plaintext data sockets), control over " + sec.get("control", "?"))
    b = stats.get("batch")
    if b and b["batched_calls"]:
        lines.append(f"batching: {b['batched_frames']} frames stepped together in {b['batched_calls']} engine calls "
                     f"({b['members']} streams in {b['groups']} group(s), at most {b['max_batch']} per call)")
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
