"""The live service's configuration: one field per choice, with its reason, validated whole."""

from __future__ import annotations

import getpass
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdenoise.stream import wire

__all__ = ["ServiceConfig", "MAX_INPUT_HEADER", "DEFAULT_CONTROL", "runtime_dir"]

# An output header repeats the input's keys and adds ~100 bytes (t_recv_ns, model, ...): an
# input header must leave that room under the wire's limit, or its outputs could not be sent.
MAX_INPUT_HEADER = wire.MAX_HEADER_BYTES - 1024


def runtime_dir() -> Path:
    """This user's private folder for the service's local sockets: ``$XDG_RUNTIME_DIR/rtdenoise``
    (a per-user tmpfs on most Linux desktops), else ``<tmp>/rtdenoise-<user>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "rtdenoise"
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - a UID with no name (containers): the number will do
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"rtdenoise-{user}"


#: The control socket by default: a local IPC endpoint only this user can reach (folder 0700,
#: socket 0600), so no other local user's process can stop or reset the service.
DEFAULT_CONTROL = f"ipc://{runtime_dir()}/control"


@dataclass
class ServiceConfig:
    """Everything the service needs; one field per choice, with its reason.

    Addresses are ZeroMQ endpoints; ``tcp://127.0.0.1:*`` binds a free port (read the
    chosen one from :attr:`Service.addresses`).
    """

    model: Any = None  # checkpoint path, shipped name, Checkpoint, or None = the shipped default
    backend: str = "auto"  # torch | onnxruntime | tensorrt | auto (the fastest measured for the model here)
    follow_motion: bool | None = None  # imaging: the front end follows rigid motion or not (None: as the model says)
    sub: str = "tcp://127.0.0.1:5555"  # input frames; connects to an acquisition PUB that binds
    bind_sub: bool = False  # bind the input instead (many publishers connect to one service)
    pub: str = "tcp://127.0.0.1:5556"  # output, always bound: consumers connect
    control: str = DEFAULT_CONTROL  # REP for status/reset/stop, always bound; ipc: only this user reaches it
    allow_tcp_control: bool = False  # a tcp:// control without CURVE: any local process could stop the service
    subscribe: tuple[str, ...] = ("",)  # stream-name prefixes to take (one service per share of streams)
    max_queue: int = 1000  # frames per stream waiting for the engine; beyond, the oldest are dropped
    max_queue_bytes: int = 64 * 2**20  # and at most this many bytes of them (a 512x512 uint16 stream: 128 frames)
    max_streams: int = 64  # streams held at once; messages of more are rejected
    max_streams_per_sender: int | None = None  # streams one sender may open (CURVE key, else peer address); None: any
    stream_idle_s: float = 300.0  # a stream with no message for this long is flushed and forgotten (0: never)
    max_header_bytes: int = MAX_INPUT_HEADER  # passed to wire.decode; room left for what outputs add
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES  # passed to wire.decode and ZMQ_MAXMSGSIZE
    rcvhwm: int = 10_000  # messages libzmq buffers before the receive thread reads them
    latency_window: int = 1000  # recent messages the latency percentiles cover
    threads: int | None = None  # engine threads (None: the engine's default, 1 on the CPU backends)
    spin: bool = False  # latency mode: one thread receives and steps, polling without sleeping (a core at 100 %)
    max_batch: int = 16  # most streams (same frame shape) stepped in one engine call; 1: each stream alone
    warm_shapes: tuple[tuple[int, ...], ...] = ()  # frame shapes to step once at start, at each group size
    curve_keys: Any = None  # directory with server.key_secret and authorized/*.key: CURVE on every socket

    def validate(self) -> None:
        if self.follow_motion is not None and not isinstance(self.follow_motion, bool):
            raise ValueError(f"follow_motion must be True, False or None (as the model says), got {self.follow_motion!r}")
        if isinstance(self.max_header_bytes, int) and self.max_header_bytes > MAX_INPUT_HEADER:
            raise ValueError(f"max_header_bytes must be <= {MAX_INPUT_HEADER} (the wire's {wire.MAX_HEADER_BYTES} less "
                             f"room for the keys output headers add), got {self.max_header_bytes}")
        for name in ("max_queue", "max_queue_bytes", "max_streams", "max_header_bytes", "max_payload_bytes",
                     "rcvhwm", "latency_window", "max_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        v = self.stream_idle_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise ValueError(f"stream_idle_s must be a number of seconds >= 0 (0: never), got {v!r}")
        try:
            self.warm_shapes = tuple(tuple(int(d) for d in shape) for shape in self.warm_shapes)
        except (TypeError, ValueError):
            raise ValueError(f"warm_shapes must be frame shapes like ((512, 512),), got {self.warm_shapes!r}") from None
        if any(not shape or min(shape) < 1 for shape in self.warm_shapes):
            raise ValueError(f"warm_shapes must be frame shapes of sizes >= 1, got {self.warm_shapes!r}")
        v = self.max_streams_per_sender
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"max_streams_per_sender must be an int >= 1 or None (no limit), got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1 or None, got {self.threads!r}")
        for name in ("sub", "pub", "control"):
            v = getattr(self, name)
            if not isinstance(v, str) or "://" not in v:
                raise ValueError(f"{name} must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {v!r}")
            port = v.rsplit(":", 1)[-1] if v.startswith(("tcp://", "udp://")) else "*"
            if port != "*" and not (port.isdigit() and 0 < int(port) <= 65535):  # libzmq wraps 70000 to 4464
                raise ValueError(f"{name}: port {port!r} of {v!r} is not a port (1 to 65535, or * for a free one)")
        if isinstance(self.subscribe, str):
            self.subscribe = (self.subscribe,)
        self.subscribe = tuple(self.subscribe)
        if not self.subscribe or not all(isinstance(s, str) for s in self.subscribe):
            raise ValueError(f"subscribe must be stream-name prefixes ('' = all), got {self.subscribe!r}")
        if self.control.split("://")[0] not in ("ipc", "inproc") and self.curve_keys is None \
                and not self.allow_tcp_control:
            raise ValueError(
                f"control {self.control!r} is a plaintext network socket: any process on this machine (and "
                "beyond, off loopback) could stop or reset the service. Use the default local IPC control "
                f"({DEFAULT_CONTROL}, this user only), ipc:///path, turn on CURVE (curve_keys; then only keys in "
                "authorized/control/ get in), or allow it explicitly (--allow-tcp-control, allow_tcp_control=True)")
        if self.curve_keys is not None and not isinstance(self.curve_keys, (str, os.PathLike)):
            raise TypeError(f"curve_keys must be a directory path (made by `rtdenoise keys DIR`), got {self.curve_keys!r}")
