"""Several rigs, several services: ZeroMQ's own proxy (XSUB → XPUB) between them.

One service per machine or GPU; a lab with several rigs fans in and out through proxies,
and no piece needs to know how many of the others there are::

    rigs (PUB, connect) ──▶ [frames proxy: XSUB bind :5555 │ XPUB bind :5550]
                                                             │
         services (SUB, connect to :5550, each --subscribe its rigs' prefix)
                                                             │  PUB bind :5561, :5562 ...
    [outputs proxy: XSUB connect to :5561, :5562 ... │ XPUB bind :5556] ──▶ consumers (SUB)

Subscriptions travel upstream through an XPUB/XSUB pair, so each service still receives
only the streams it subscribed to, and each consumer only those it asked for. The proxy
copies nothing it does not forward and never looks inside a message (libzmq's
``zmq_proxy`` in a thread).

From a shell: ``rtdenoise proxy --xsub tcp://0.0.0.0:5555 --xpub tcp://0.0.0.0:5550`` (both
bound), or with ``--connect-xsub`` and one ``--xsub`` per service (the outputs proxy).
"""

from __future__ import annotations

import itertools
import threading
from typing import Iterable

import zmq

from rtdenoise.stream.sockets import bind_or_connect

__all__ = ["Proxy"]

_IDS = itertools.count()


class Proxy:
    """An XSUB → XPUB forwarder in a thread of its own.

    Parameters
    ----------
    xsub : str or list of str
        Where publishers' messages come in: bound (publishers connect) or, with
        ``connect_xsub``, connected to each of these PUB endpoints (services' outputs).
    xpub : str
        Where subscribers connect (bound).
    connect_xsub : bool
    context : zmq.Context, optional

    Attributes
    ----------
    addresses : dict
        ``{"xsub": [...], "xpub": ...}``, the endpoints in use (ports chosen for ``:*``).
    """

    def __init__(self, xsub: str | Iterable[str], xpub: str, *, connect_xsub: bool = False,
                 context: zmq.Context | None = None):
        ctx = context or zmq.Context.instance()
        xsubs = [xsub] if isinstance(xsub, str) else list(xsub)
        if not xsubs:
            raise ValueError("give at least one --xsub endpoint")
        self._front, self._back = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
        self._front.rcvhwm = self._back.sndhwm = 10_000
        ctl = f"inproc://rtdenoise-proxy-{next(_IDS)}"
        self._ctl_in, self._ctl_out = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        try:
            self._ctl_in.bind(ctl)
            self._ctl_out.connect(ctl)
            self._made: list = []  # private folders of ipc://* endpoints, removed at stop
            self.addresses = {"xsub": [bind_or_connect(self._front, a, not connect_xsub, name="xsub", made=self._made)
                                       for a in xsubs],
                              "xpub": bind_or_connect(self._back, xpub, True, name="xpub", made=self._made)}
        except Exception:
            self._close()
            raise
        self._thread: threading.Thread | None = None

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._run, name="rtdenoise-proxy", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._front, self._back, None, self._ctl_in)
        except zmq.ContextTerminated:
            pass
        finally:
            self._close(self._front, self._back, self._ctl_in)  # this thread's sockets

    def stop(self) -> None:
        """Stop forwarding and close the sockets."""
        if self._thread is not None and self._thread.is_alive():
            self._ctl_out.send(b"TERMINATE")
            self._thread.join(5)
            if self._thread.is_alive():  # its sockets are its own: never closed from here
                return
        self._close()
        for folder in getattr(self, "_made", ()):
            for f in folder.iterdir() if folder.is_dir() else ():
                f.unlink(missing_ok=True)
            if folder.is_dir():
                folder.rmdir()

    def _close(self, *socks: zmq.Socket) -> None:
        for s in socks or (self._front, self._back, self._ctl_in, self._ctl_out):
            if not s.closed:
                s.close(linger=0)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
