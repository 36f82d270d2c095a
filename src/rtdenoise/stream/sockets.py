"""ZeroMQ sockets of the live service and of its clients, in one place: bind or connect,
CURVE roles (:mod:`rtdenoise.security`), libzmq's socket monitors.

The service is the CURVE server on all three of its sockets, whichever side binds;
everything talking to it is a CURVE client. :func:`open_client` makes a client's socket
(:class:`~rtdenoise.stream.client.Publisher`, :class:`~rtdenoise.stream.client.Subscriber`,
:func:`~rtdenoise.stream.control.control`); :class:`ServiceSockets` makes the service's
input SUB, output PUB and control REP, each with a monitor that reports its connection
events (:meth:`ServiceSockets.events`).

Sends use ``copy=False`` and leave the choice to pyzmq: a part smaller than the socket's
``copy_threshold`` (64 kB by default) is copied anyway, a bigger one is sent from its
buffer without a copy.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import socket as _socket
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import zmq

from rtdenoise import security
from rtdenoise.stream import wire

__all__ = ["EVENTS", "SMALL_MSG_BYTES", "CONTROL_LINGER_MS", "ROLE_OF", "bind_or_connect", "open_client",
           "ServiceSockets"]

#: libzmq socket events the service counts in ``status["connections"]``, by the name counted.
EVENTS = {
    "EVENT_ACCEPTED": "accepted", "EVENT_CONNECTED": "connected", "EVENT_DISCONNECTED": "disconnected",
    "EVENT_HANDSHAKE_SUCCEEDED": "handshake_ok", "EVENT_HANDSHAKE_FAILED_AUTH": "auth_refused",
    "EVENT_HANDSHAKE_FAILED_NO_DETAIL": "handshake_failed", "EVENT_HANDSHAKE_FAILED_PROTOCOL": "handshake_failed",
}
#: Reported but not counted: libzmq will connect again by itself (after an ordinary disconnect).
RETRYING = "connect_retried"
_EVENT_NAMES = {getattr(zmq, k): v for k, v in {**EVENTS, "EVENT_CONNECT_RETRIED": RETRYING}.items()}
_EVENT_MASK = functools.reduce(operator.or_, _EVENT_NAMES)  # what the monitors report
_MONITOR_IDS = itertools.count()

SMALL_MSG_BYTES = 64 * 1024  # ZMQ_MAXMSGSIZE of the PUB (inbound subscriptions) and the control REP
CONTROL_LINGER_MS = 200  # lets the reply to "stop" leave before the REP socket closes
#: The CURVE role (ZAP domain, :data:`rtdenoise.security.ROLES`) each service socket admits.
ROLE_OF = {"sub": "publish", "pub": "subscribe", "control": "control"}


def _ipc_bind_path(address: str, name: str | None) -> tuple[str, Path | None]:
    """Get an ``ipc://`` endpoint ready to bind: ``ipc://*`` becomes a socket in a new private
    folder (returned, for removal at close; libzmq's own wildcard would put it in the working
    directory); a missing folder is made private (0700), and so is this user's default
    runtime folder; a folder only this user (or root, when sticky, as /tmp) controls is
    required, since whoever owns the folder can swap the socket file; a path where a live
    socket answers is refused (libzmq would silently take it over from its owner)."""
    from rtdenoise.stream.config import runtime_dir

    path = address[len("ipc://"):]
    what = f"the {name} socket" if name else "a socket"
    if path == "*":
        made = Path(tempfile.mkdtemp(prefix="rtdenoise-"))  # mode 0700
        return f"ipc://{made / (name or 'socket')}", made
    if path.startswith("@"):  # Linux abstract namespace: no file, no permissions to set
        return address, None
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        where = p.parent.stat()
        mine = where.st_uid == os.getuid()
        if not (mine or (where.st_uid == 0 and where.st_mode & stat.S_ISVTX)):
            raise ValueError(f"cannot bind {what} to {address!r}: {p.parent} belongs to another user, who could "
                             "replace the socket file; use a folder of your own")
        if mine and p.parent == runtime_dir() and stat.S_IMODE(where.st_mode) & 0o077:
            os.chmod(p.parent, 0o700)  # the default folder is private whoever made it loose
    busy = (f"cannot bind {what} to {address!r}: another process is listening there (a second service? give "
            "each its own endpoint, e.g. --control ipc:///path/to/its.sock)")
    live = _listening(p) if p.exists() else False
    if live:
        raise ValueError(busy)
    if live is None:  # no table to read, or a socket bound by a relative path: connect to find out
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(p))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # a stale file from a process that died: libzmq replaces it
        except OSError as e:
            raise ValueError(f"cannot bind {what} to {address!r}: {p} exists and cannot be checked ({e})") from None
        else:
            raise ValueError(busy)
        finally:
            probe.close()
    return address, None


def _listening(path: Path) -> bool | None:
    """Whether a live unix socket is bound at ``path`` (an existing file), read from Linux's
    ``/proc/net/unix`` without connecting: a connection that never greets makes the service
    that owns it count and log a failed handshake. None when that cannot tell: no such table
    (macOS), or a socket bound by a relative path with this file's name."""
    try:
        table = Path("/proc/net/unix").read_text()
    except OSError:
        return None
    target, unsure = os.path.realpath(path), False
    for line in table.splitlines()[1:]:
        fields = line.split()
        bound = fields[7] if len(fields) >= 8 else ""  # Num RefCount Protocol Flags Type St Inode Path
        if os.path.basename(bound) != path.name or bound.startswith("@"):  # another name, or abstract
            continue
        if not bound.startswith("/"):
            unsure = True
        elif os.path.realpath(bound) == target:
            return True
    return None if unsure else False


def bind_or_connect(sock: zmq.Socket, address: str, bind: bool, *, name: str | None = None,
                    made: list | None = None) -> str:
    """Bind or connect ``sock``; return the endpoint in use (for a bind, the one actually
    bound, e.g. the port chosen for ``tcp://127.0.0.1:*``).

    An ``ipc://`` bind (see :func:`_ipc_bind_path`): ``ipc://*`` gets a new private folder
    (appended to ``made``, for the caller to remove after closing), the socket file is made
    readable and writable by this user only (0600: other users cannot connect), and a path
    another live process listens on is refused.

    ``name``: the socket's role (``"sub"``, ...): a failure is then a ValueError naming it
    and the address (the service's sockets); without it the ZMQError passes through.
    """
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"address must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {address!r}")
    try:
        if bind:
            folder = None
            if address.startswith("ipc://"):
                address, folder = _ipc_bind_path(address, name)
                if folder is not None and made is not None:
                    made.append(folder)
            sock.bind(address)
            bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            if bound.startswith("ipc://") and not bound.startswith("ipc://@"):
                os.chmod(bound[len("ipc://"):], 0o600)
            return bound
        sock.connect(address)
        return address
    except zmq.ZMQError as e:
        if name is None:
            raise
        verb = "bind" if bind else "connect"
        hint = "; is another service running there? pick another port" if e.errno == zmq.EADDRINUSE else ""
        raise ValueError(f"cannot {verb} the {name} socket to {address!r}: {e}{hint}") from None


def open_client(kind: int, address: str, *, bind: bool = False, curve_keys: Any = None,
                context: zmq.Context | None = None, options: Iterable[tuple[int, Any]] = ()) -> tuple[zmq.Socket, str]:
    """A client's socket of type ``kind``, CURVE client of the service when ``curve_keys``
    (``(client_secret_file, server_public_file)`` or :class:`~rtdenoise.security.ClientKeys`)
    are given, with ``options`` set, bound or connected. Returns ``(socket, endpoint)``.

    Bad key files fail before any socket exists; any later failure closes the socket.
    """
    keys = security.client_keys(curve_keys)
    if bind and address == "ipc://*":
        raise ValueError("ipc://* is for the service's own sockets; give a client's bound ipc endpoint a path, "
                         "e.g. ipc:///run/user/1000/rig1.sock")
    sock = (context or zmq.Context.instance()).socket(kind)
    try:
        security.apply_client(sock, keys)
        for opt, value in options:
            sock.setsockopt(opt, value)
        return sock, bind_or_connect(sock, address, bind)
    except Exception:
        sock.close(linger=0)
        raise


class ServiceSockets:
    """The service's sockets: input SUB (``sub``), output PUB (``pub``), control REP (``control``).

    Everything is made, bound or connected here, so an address in use fails at
    construction with the address in the message (then everything made so far is closed).
    Binding anything but loopback without CURVE warns. With ``curve`` (the service's
    :class:`~rtdenoise.security.ServerKeys`) every socket is a CURVE server and a ZAP
    handler admits only the authorized client keys; without a ``context`` it runs on a
    context of its own (one authenticator per context).

    Each socket belongs to one thread: the caller passes it there and closes it there with
    :meth:`close`; :meth:`close_all` then closes whatever is left and the monitors.

    Attributes
    ----------
    sub, pub, control : zmq.Socket
    addresses : dict
        ``{"sub": ..., "pub": ..., "control": ...}``, the endpoints actually bound.
    monitors : dict
        Socket name -> the PAIR socket its events arrive on (poll it, then :meth:`events`).
    """

    NAMES = ("sub", "pub", "control")

    def __init__(self, *, sub: str, bind_sub: bool, pub: str, control: str, subscribe: Iterable[str] = ("",),
                 rcvhwm: int = 10_000, max_msg_bytes: int = wire.MAX_PAYLOAD_BYTES,
                 curve: security.ServerKeys | None = None, context: zmq.Context | None = None):
        self.curve = curve
        self.bind_sub = bind_sub
        self._own_ctx = context is None and curve is not None
        self.context = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth = None  # the CURVE ZAP handler
        self.sub = self.pub = self.control = None
        self.monitors: dict[str, zmq.Socket] = {}
        self.addresses: dict[str, str] = {}
        self._made: list[Path] = []  # private folders of ipc://* endpoints, removed at close_all
        try:
            for name, addr, bind in (("sub", sub, bind_sub), ("pub", pub, True), ("control", control, True)):
                if bind and not security.is_loopback(addr) and curve is None:
                    # stacklevel 4: who made the Service (here, Service.__init__, its caller, that one's caller).
                    warnings.warn(
                        f"rtdenoise service: {name} binds to {addr}, reachable from other machines without "
                        "authentication (anyone there can publish frames, read outputs, or stop the service); "
                        "bind to tcp://127.0.0.1 unless this network is trusted, or turn on CURVE encryption and "
                        "authentication: make keys with `rtdenoise keys DIR`, copy each client's NAME.key into "
                        "DIR/authorized/, and serve with --curve-keys DIR (ServiceConfig.curve_keys)",
                        RuntimeWarning, stacklevel=4)
            if curve is not None:
                # Before any bind: without a ZAP handler libzmq would admit every CURVE client.
                self._auth = security.start_authenticator(self.context, curve)
            self.sub = self._socket(zmq.SUB, "sub")
            self.sub.setsockopt(zmq.RCVHWM, rcvhwm)
            # libzmq drops (and disconnects) any part above this before it reaches us.
            self.sub.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
            for prefix in subscribe:
                self.sub.setsockopt(zmq.SUBSCRIBE, wire.topic_for(wire.FRAMES) + prefix.encode())
            self.addresses["sub"] = bind_or_connect(self.sub, sub, bind_sub, name="sub", made=self._made)
            self.pub = self._socket(zmq.PUB, "pub")
            self.pub.setsockopt(zmq.MAXMSGSIZE, SMALL_MSG_BYTES)  # what comes in on a PUB: subscriptions
            self.addresses["pub"] = bind_or_connect(self.pub, pub, True, name="pub", made=self._made)
            self.control = self._socket(zmq.REP, "control")
            self.control.setsockopt(zmq.MAXMSGSIZE, SMALL_MSG_BYTES)
            self.addresses["control"] = bind_or_connect(self.control, control, True, name="control",
                                                        made=self._made)
        except Exception:
            self.close_all()
            raise

    def _socket(self, kind: int, name: str) -> zmq.Socket:
        """A new socket with the CURVE server role (when on) and a monitor, before it binds."""
        sock = self.context.socket(kind)
        if self.curve is not None:
            security.apply_server(sock, self.curve, ROLE_OF[name])
        # libzmq sends monitor events *blocking*, from its I/O thread: a monitor nobody reads
        # (closed, or with a full pipe) would freeze every socket of the context. So the reader
        # has no high-water mark, lives until the monitored socket has stopped its monitor (see
        # close), and the address is unique (pyzmq's default reuses file descriptor numbers).
        addr = f"inproc://rtdenoise-monitor-{next(_MONITOR_IDS)}-{name}"
        sock.monitor(addr, _EVENT_MASK)
        mon = self.context.socket(zmq.PAIR)
        mon.rcvhwm = 0
        mon.linger = 0
        mon.connect(addr)
        self.monitors[name] = mon
        return sock

    def events(self, name: str) -> Iterator[str]:
        """The connection events waiting on socket ``name``'s monitor, one at a time, as
        names of :data:`EVENTS` or :data:`RETRYING`; ends when none is left."""
        from zmq.utils.monitor import recv_monitor_message

        mon = self.monitors[name]
        while True:
            try:
                event = recv_monitor_message(mon, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = _EVENT_NAMES.get(event["event"])
            if kind is not None:
                yield kind

    def reconnect_input(self) -> None:
        """Connect the input again (a connecting SUB that libzmq dropped for a protocol error,
        e.g. a part over ``ZMQ_MAXMSGSIZE``: libzmq itself never retries it).

        Only for that case: after an ordinary disconnect libzmq retries by itself, and a second
        connection made beside its own makes libzmq 4.3.5 abort the process when one of the
        two pipes ends in the middle of a multipart read (``Assertion failed: !_more (fq.cpp)``).
        """
        addr = self.addresses["sub"]
        try:
            self.sub.disconnect(addr)
        except zmq.ZMQError:
            pass
        self.sub.connect(addr)

    def close(self, name: str) -> None:
        """Stop socket ``name``'s monitor, then close it (linger 0; the control REP lingers
        :data:`CONTROL_LINGER_MS`). Its monitor's reader stays open until :meth:`close_all`."""
        sock = getattr(self, name)
        if sock is None or sock.closed:
            return
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        sock.close(linger=CONTROL_LINGER_MS if name == "control" else 0)

    def close_all(self) -> None:
        """Close every socket and monitor, stop the ZAP handler, end a context of our own."""
        for name in self.NAMES:
            self.close(name)
        for mon in self.monitors.values():  # only now: nothing can send them events any more
            if not mon.closed:
                mon.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and not self.context.closed:
            self.context.term()
        for folder in self._made:  # libzmq has removed the socket files as it closed them
            for f in folder.iterdir() if folder.is_dir() else ():
                f.unlink(missing_ok=True)
            if folder.is_dir():
                folder.rmdir()
        self._made.clear()

