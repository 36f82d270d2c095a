"""CURVE keys for the live service: make them, load them, put them on sockets.

ZeroMQ's CURVE mechanism (CurveZMQ: Curve25519 keys, every message encrypted and
authenticated) has a **server** side that owns a long-term key pair, and **clients**
that know the server's public key in advance and prove their own key pair. Which side
binds and which connects does not matter to CURVE, so rtdenoise fixes the roles by
*who is who*, not by the direction of the connection:

- the **service is the CURVE server on all three of its sockets** (input SUB, output
  PUB, control REP), whether its input binds (``--bind-sub``) or connects to an
  acquisition PUB that binds;
- everything talking to it is a **CURVE client**: the acquisition's publisher,
  consumers' subscribers, ``rtdenoise status``/``replay``/``bench``.

The service admits a client only when the client's public key is in its
``authorized/`` folder (checked by a ZAP handler, :class:`zmq.auth.thread.ThreadAuthenticator`);
a client with another key, or a plaintext client, fails the handshake and never sends
or receives a message. The service counts those refusals (``connections`` in status).

Files, as :func:`zmq.auth.create_certificates` writes them (text "certificates"):

- ``NAME.key``: the public key; safe to copy anywhere.
- ``NAME.key_secret``: the public and the secret key; keep it on its own machine
  (written with mode 0600).

A key directory for the service (``rtdenoise keys DIR``)::

    DIR/server.key                 give to every client (they need the server's public key)
    DIR/server.key_secret          stays with the service
    DIR/authorized/NAME.key        data clients: may publish frames and subscribe to outputs
    DIR/authorized/publish/        keys that may only publish frames (an acquisition rig)
    DIR/authorized/subscribe/      keys that may only subscribe (a display, a controller)
    DIR/authorized/control/        keys that may use the control socket (status, reset, stop)
    DIR/authorized/**/NAME.streams optional, beside a key that may publish: the stream-name
                                   prefixes it may publish to, one per line (a prefix:
                                   "rig1" also allows "rig10"; end it with a separator, "rig1/")

Each of the service's sockets checks its own role (its ZAP domain): a display's key
cannot publish into a stream nor stop the service. Only keys in ``authorized/control/``
reach the control socket. A publisher with ``NAME.streams`` sees its messages to any
other stream refused (``stream_not_allowed``).

A client (``rtdenoise keys CLIENTDIR --name rig1``) holds ``rig1.key_secret`` and sends its
``rig1.key`` to the service's ``authorized/`` folder of its role
(``--authorize DIR --role publish --streams rig1``). Keys are read when the service starts.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> pub, sec = create_keys(d)                       # the service's pair + authorized/
>>> cpub, csec = create_keys(d / "client", name="rig1")
>>> _ = (d / "authorized" / "rig1.key").write_bytes(cpub.read_bytes())
>>> load_server_keys(d).n_authorized
1
>>> sorted(load_server_keys(d).roles_of(cpub.read_bytes().split(b'"')[1]))
['publish', 'subscribe']
>>> client_keys((csec, pub)).server_public == load_server_keys(d).public
True
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "SERVER_NAME",
    "AUTHORIZED",
    "ROLES",
    "ServerKeys",
    "ClientKeys",
    "create_keys",
    "load_server_keys",
    "client_keys",
    "apply_server",
    "apply_client",
    "start_authenticator",
    "is_loopback",
]

SERVER_NAME = "server"  # the service's key pair: server.key, server.key_secret
AUTHORIZED = "authorized"  # sub-folder of allowed clients' public keys (*.key)
#: Roles, each a sub-folder of ``authorized/`` and the ZAP domain of one service socket.
ROLES = ("publish", "subscribe", "control")
DATA_ROLES = ("publish", "subscribe")  # what a key directly in authorized/ may do
STREAMS_SUFFIX = ".streams"  # beside NAME.key: the stream-name prefixes that key may publish to

_HOW = "make one with `rtdenoise keys DIR` (the service's pair) and `rtdenoise keys DIR --name NAME` (a client's)"


def _curve_available() -> None:
    import zmq

    if not zmq.has("curve"):
        raise ImportError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE; install a pyzmq wheel "
            "(pip install --force-reinstall pyzmq), which bundles libzmq with libsodium"
        )


def create_keys(directory: str | os.PathLike, name: str = SERVER_NAME, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory``.

    Parameters
    ----------
    directory : path
        Created if missing. For the server's pair (``name="server"``) an empty
        ``authorized/`` folder is created beside it, for the clients' public keys.
    name : str
        File stem: ``"server"`` for the service, anything else (e.g. the rig or the
        consumer) for a client.
    force : bool
        Overwrite an existing pair; by default refuse (a new key locks out every peer
        that knew the old one).

    Returns
    -------
    (public_path, secret_path)
    """
    import zmq.auth

    _curve_available()
    if not isinstance(name, str) or not name or os.sep in name or name.startswith(".") or \
            (os.altsep and os.altsep in name):
        raise ValueError(f"name must be a plain file stem like 'server' or 'rig1', got {name!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise FileExistsError(
            f"{secret if secret.exists() else public} already exists; pass --force (force=True) to replace the "
            "pair (every peer holding the old public key must then get the new one)"
        )
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        pub_s, sec_s = zmq.auth.create_certificates(d, name)
    finally:
        os.umask(old)
    os.chmod(sec_s, 0o600)
    os.chmod(pub_s, 0o644)
    if name == SERVER_NAME:
        for role in ROLES:
            (d / AUTHORIZED / role).mkdir(parents=True, exist_ok=True)
    return Path(pub_s), Path(sec_s)


@dataclass(frozen=True)
class ServerKeys:
    """The service's key pair and what each allowed client key may do.

    ``roles``: role -> the z85 public keys allowed it; ``names``: key -> where it was
    found (``"publish/rig1"``, ``"alice"``), for status and logs; ``streams``: key -> the
    stream-name prefixes it may publish to (absent: any stream).
    """

    public: bytes  # z85, 40 bytes
    secret: bytes
    directory: Path
    authorized_dir: Path
    roles: Mapping[str, frozenset] = field(default_factory=dict)
    names: Mapping[bytes, str] = field(default_factory=dict)
    streams: Mapping[bytes, tuple] = field(default_factory=dict)

    @property
    def n_authorized(self) -> int:
        """Distinct client keys allowed in, in any role."""
        return len(self.names)

    def roles_of(self, key: bytes) -> list[str]:
        return [r for r in ROLES if key in self.roles.get(r, ())]

    def summary(self) -> dict:
        """For status: keys per role, and how many publishers are limited to streams."""
        return {**{r: len(self.roles.get(r, ())) for r in ROLES}, "stream_limited": len(self.streams)}


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the public key of the service it talks to."""

    public: bytes
    secret: bytes
    server_public: bytes




def make_keys(directory: str | os.PathLike, name: str = SERVER_NAME, *, authorize: str | os.PathLike | None = None,
              role: str = "data", streams: list[str] | tuple[str, ...] = (), force: bool = False) -> list[str]:
    """``rtdenoise keys``: :func:`create_keys`, optionally authorizing a client's key with a
    service: copied into ``authorize/authorized/`` (``role="data"``: publish and subscribe)
    or its ``publish/``, ``subscribe/`` or ``control/`` folder, with a ``NAME.streams`` file
    when ``streams`` limits what it may publish. Returns what to tell the user, a line each."""
    import shutil

    if role not in ("data", *ROLES):
        raise ValueError(f"role must be 'data' (publish and subscribe) or one of {ROLES}, got {role!r}")
    if (role != "data" or streams) and not authorize:
        raise ValueError("--role and --streams say how to authorize a client's key: give --authorize SERVER_DIR")
    if streams and role not in ("data", "publish"):
        raise ValueError(f"--streams limits what a key may publish; a {role!r} key publishes nothing")
    if authorize and name == SERVER_NAME:
        raise ValueError("--authorize copies a client's key; give the client a --name")
    if authorize and not (Path(authorize) / AUTHORIZED).is_dir():
        raise FileNotFoundError(f"{Path(authorize) / AUTHORIZED} does not exist; "
                                f"make the service's keys first: rtdenoise keys {authorize}")
    public, secret = create_keys(directory, name, force=force)
    lines = [f"wrote {public} (public) and {secret} (secret, mode 600)"]
    if name == SERVER_NAME:
        auth = Path(directory) / AUTHORIZED
        lines += [f"serve with: rtdenoise serve --curve-keys {directory}  (allowed clients' NAME.key go in "
                  f"{auth}/ to publish and subscribe, {auth}/control/ to use status/reset/stop)",
                  f"clients need {public}: e.g. rtdenoise status --client-key CLIENT.key_secret --server-key {public}"]
        return lines
    if authorize:
        folder = Path(authorize) / AUTHORIZED / ("" if role == "data" else role)
        folder.mkdir(exist_ok=True)
        dst = folder / public.name
        shutil.copyfile(public, dst)
        what = "publish and subscribe" if role == "data" else role
        lines.append(f"authorized: copied {public.name} to {dst} (may {what}; the service reads keys when it starts)")
        limit = folder / f"{name}{STREAMS_SUFFIX}"
        limit.unlink(missing_ok=True)  # a key made again (--force) gets only the limits given now
        if streams:
            limit.write_text("".join(f"{x}\n" for x in streams), encoding="utf-8")
            lines.append(f"limited to streams starting with {', '.join(map(repr, streams))} "
                         f"({folder / (name + STREAMS_SUFFIX)})")
    else:
        lines.append(f"copy {public} into the service's DIR/{AUTHORIZED}/ (or its publish/, subscribe/ or control/ "
                     "folder) to let this client in")
    lines.append(f"this client uses: --client-key {secret} --server-key <service DIR>/server.key")
    return lines


def _load(path: Path, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; {_HOW}")
    try:
        pub, sec = zmq.auth.load_certificate(path)
    except ValueError as e:
        raise ValueError(f"{what} {path} is not a ZeroMQ certificate ({e}); {_HOW}") from None
    if len(pub) != 40:
        raise ValueError(f"{what} {path}: the public key is not a 40-character z85 key")
    if secret and (sec is None or len(sec) != 40):
        raise ValueError(
            f"{what} {path} holds no secret key; pass the NAME.key_secret file, not the public NAME.key"
        )
    return pub, sec


def load_server_keys(directory: str | os.PathLike) -> ServerKeys:
    """Load ``DIR/server.key_secret`` and check ``DIR/authorized/`` holds at least one client key.

    Raises
    ------
    FileNotFoundError
        No such directory or no ``server.key_secret`` in it.
    ValueError
        A file that is not a certificate, or no client key in ``authorized/`` (nobody
        could connect: the service refuses to start rather than run deaf).
    """
    _curve_available()
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"CURVE key directory {d} does not exist; {_HOW}")
    sec_path = d / f"{SERVER_NAME}.key_secret"
    pub, sec = _load(sec_path, "the service's secret key", secret=True)
    mode = sec_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(f"{sec_path} is readable by other users (mode {stat.S_IMODE(mode):o}); chmod 600 it",
                      RuntimeWarning, stacklevel=3)
    auth = d / AUTHORIZED
    if not auth.is_dir():
        raise FileNotFoundError(
            f"{auth} does not exist; create it and copy there the NAME.key of every client allowed in "
            "(`rtdenoise keys CLIENTDIR --name NAME` makes one)"
        )
    roles: dict[str, set] = {r: set() for r in ROLES}
    names: dict[bytes, str] = {}
    streams: dict[bytes, set] = {}
    for folder, allowed in ((auth, DATA_ROLES), *((auth / r, (r,)) for r in ROLES)):
        for k in sorted(folder.glob("*.key")) if folder.is_dir() else ():
            key, _ = _load(k, "the authorized client key", secret=False)
            names.setdefault(key, str(k.relative_to(auth).with_suffix("")))
            for r in allowed:
                roles[r].add(key)
            limit = k.with_suffix(STREAMS_SUFFIX)
            if limit.exists():
                if "publish" not in allowed:
                    raise ValueError(f"{limit}: only a key that may publish can be limited to streams "
                                     f"(put it in {auth}/ or {auth / 'publish'}/)")
                streams.setdefault(key, set()).update(_read_streams(limit))
    if not names:
        raise ValueError(
            f"no client public keys (*.key) in {auth} or its {', '.join(ROLES)}/ folders: no client could connect. "
            f"Make a client pair with `rtdenoise keys CLIENTDIR --name NAME` and copy CLIENTDIR/NAME.key into {auth}/"
        )
    return ServerKeys(pub, sec, d, auth, {r: frozenset(v) for r, v in roles.items()}, names,
                      {k: tuple(sorted(v)) for k, v in streams.items()})


def _read_streams(path: Path) -> list[str]:
    """A ``NAME.streams`` file: stream-name prefixes, one per line; ``#`` starts a comment."""
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prefixes = [ln for ln in lines if ln]
    if not prefixes:
        raise ValueError(f"{path} lists no stream-name prefix: that key could publish nothing; list the "
                         "prefixes it may publish to, one per line, or delete the file to allow every stream")
    return prefixes


def client_keys(spec: Any) -> ClientKeys | None:
    """A client's keys from ``(client_secret_path, server_public_path)``, or None for plaintext.

    ``spec`` may also be a :class:`ClientKeys` already loaded.
    """
    if spec is None or isinstance(spec, ClientKeys):
        return spec
    if isinstance(spec, (str, os.PathLike)) or not hasattr(spec, "__len__") or len(spec) != 2:
        raise TypeError(
            "curve_keys must be (client_secret_key_file, server_public_key_file), e.g. "
            f"('keys/rig1.key_secret', 'keys/server.key'), got {spec!r}"
        )
    _curve_available()
    mine, server = (Path(p) for p in spec)
    pub, sec = _load(mine, "the client's secret key", secret=True)
    spub, _ = _load(server, "the service's public key", secret=False)
    return ClientKeys(pub, sec, spub)


def apply_server(sock, keys: ServerKeys, role: str) -> None:
    """Make ``sock`` the CURVE server side with the service's keys, admitting the clients
    allowed ``role`` (one of :data:`ROLES`; before bind/connect)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    sock.zap_domain = role.encode()
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def apply_client(sock, keys: ClientKeys | None) -> None:
    """Make ``sock`` a CURVE client of the service (before bind/connect); None: plaintext."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only (``ipc``, ``inproc``,
    ``tcp`` on 127.x.x.x, ``::1``, ``localhost`` or ``lo``).

    >>> is_loopback("tcp://127.0.0.1:5555"), is_loopback("tcp://0.0.0.0:5555")
    (True, False)
    """
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].split(";")[-1].strip("[]")
    return host in ("localhost", "::1", "lo") or host.startswith("127.")


class _RoleCheck:
    """pyzmq's CURVE credentials provider for one role (ZAP domain): is this key allowed it?"""

    def __init__(self, keys: frozenset):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(context, keys: ServerKeys):
    """Start the ZAP handler that admits each socket's clients by role: a socket's ZAP
    domain (:func:`apply_server`) is its role, and only the keys allowed that role get in.

    One per :class:`zmq.Context` (it binds ``inproc://zeromq.zap.01``); it must run
    before the server sockets bind, or libzmq admits every client. Returns the
    :class:`~zmq.auth.thread.ThreadAuthenticator`; call ``.stop()`` after closing the sockets.
    A message's ``User-Id`` property is then the sender's z85 public key.
    """
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    try:
        auth.start()
    except zmq.ZMQError as e:
        raise RuntimeError(
            f"cannot start the CURVE authenticator on this ZeroMQ context ({e}); another one already runs "
            "there: give the service its own context (the default when curve_keys is set)"
        ) from None
    for role in ROLES:
        auth.configure_curve_callback(domain=role, credentials_provider=_RoleCheck(keys.roles.get(role, frozenset())))
    return auth
