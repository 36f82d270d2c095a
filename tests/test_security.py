"""Security of the live service: CURVE keys, allowed and refused clients, loopback by default, no pickle.

Every service here runs in-process on ``tcp://127.0.0.1:*`` ports. "Gets nothing" is
checked by waiting a bounded time while an allowed client, on the same service, gets
its frames; libzmq's own monitor events say why the others got nothing.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import pickle
import stat
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtdenoise import security
from rtdenoise.denoise import denoise
from rtdenoise.stream import Publisher, Service, Subscriber, control, replay

pytestmark = pytest.mark.timeout(60)

ANY = "tcp://127.0.0.1:*"
SRC = Path(__file__).resolve().parents[1] / "src" / "rtdenoise"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A service key directory with alice authorized; mallory has a pair the service never saw."""
    root = tmp_path_factory.mktemp("keys")
    server = root / "server"
    security.create_keys(server)
    a_pub, a_sec = security.create_keys(root / "alice", name="alice")
    (server / "authorized" / "alice.key").write_bytes(a_pub.read_bytes())  # data: publish and subscribe
    (server / "authorized" / "control" / "alice.key").write_bytes(a_pub.read_bytes())  # and control
    _, m_sec = security.create_keys(root / "mallory", name="mallory")
    return {"dir": server, "server_pub": server / "server.key", "alice": (a_sec, server / "server.key"),
            "mallory": (m_sec, server / "server.key")}


def _drain(sub: Subscriber, seconds: float) -> list:
    got, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            got.append(sub.recv(timeout=left))
    return got


def _until_flowing(pub: Publisher, sub: Subscriber, frame: np.ndarray, timeout: float = 10.0) -> int:
    """Send probe frames until one comes back denoised (the CURVE handshakes are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.send(frame)
        with contextlib.suppress(TimeoutError):
            h, _ = sub.recv(timeout=0.05)
            return h["seq"]
    raise AssertionError("no frame came back through the CURVE service")


# ----------------------------------------------------------------------------- keys


def test_keys_cli_makes_pairs_authorizes_and_refuses_to_overwrite(tmp_path, capsys):
    from rtdenoise.cli import main

    d = tmp_path / "svc"
    assert main(["keys", str(d)]) == 0
    assert "--curve-keys" in capsys.readouterr().out
    assert (d / "server.key").is_file() and (d / "server.key_secret").is_file() and (d / "authorized").is_dir()
    assert stat.S_IMODE((d / "server.key_secret").stat().st_mode) == 0o600
    pub, sec = zmq.auth.load_certificate(d / "server.key_secret")
    assert len(pub) == 40 and len(sec) == 40
    assert zmq.auth.load_certificate(d / "server.key") == (pub, None)  # the public file holds no secret

    assert main(["keys", str(tmp_path / "rig"), "--name", "rig1", "--authorize", str(d)]) == 0
    assert (d / "authorized" / "rig1.key").read_bytes() == (tmp_path / "rig" / "rig1.key").read_bytes()
    assert security.load_server_keys(d).n_authorized == 1

    capsys.readouterr()
    assert main(["keys", str(d)]) == 2  # a new server key would lock every client out
    assert "already exists" in capsys.readouterr().err
    assert zmq.auth.load_certificate(d / "server.key_secret") == (pub, sec)
    assert main(["keys", str(d), "--force"]) == 0
    assert zmq.auth.load_certificate(d / "server.key_secret")[0] != pub
    assert main(["keys", str(tmp_path / "x"), "--name", "../evil"]) == 2
    assert main(["keys", str(tmp_path / "y"), "--name", "bob", "--authorize", str(tmp_path / "nowhere")]) == 2


def test_service_refuses_to_start_without_usable_keys(ck, keys, tmp_path):
    kw = dict(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*")
    with pytest.raises(FileNotFoundError, match="rtdenoise keys"):
        Service(curve_keys=str(tmp_path / "nope"), **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="server.key_secret"):
        Service(curve_keys=str(tmp_path / "empty"), **kw)
    security.create_keys(tmp_path / "lonely")  # a server pair, but nobody authorized
    with pytest.raises(ValueError, match="no client could connect"):
        Service(curve_keys=str(tmp_path / "lonely"), **kw)
    (tmp_path / "lonely" / "authorized" / "junk.key").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="not a ZeroMQ certificate"):
        Service(curve_keys=str(tmp_path / "lonely"), **kw)
    # clients: the public file where the secret one belongs is caught before any socket exists
    with pytest.raises(ValueError, match="holds no secret key"):
        Subscriber(ANY, curve_keys=(keys["server_pub"], keys["server_pub"]))
    with pytest.raises(TypeError, match="client_secret_key_file, server_public_key_file"):
        Publisher(ANY, stream="x", curve_keys=str(keys["server_pub"]))


# ----------------------------------------------------------------------------- allowed and refused clients


def test_a_second_service_refused_an_address_in_use_without_touching_the_first(ck, keys, tmp_path, caplog):
    """Acceptance review: a second ``serve`` on the same ipc control path was refused after a
    probe connection, and the first service warned of a failed CURVE handshake, as for an
    attacker. On Linux the check now reads /proc/net/unix and connects to nothing."""
    caplog.set_level(logging.INFO, logger="rtdenoise.stream")
    addr = f"ipc://{tmp_path}/control.sock"
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=addr, curve_keys=str(keys["dir"])) as svc:
        with pytest.raises(ValueError, match="another process is listening there"):
            Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=addr, curve_keys=str(keys["dir"]))
        time.sleep(0.3)  # what a probe connection would have made the first service log by now
        seen = svc.stats()["connections"]["control"]
    if sys.platform.startswith("linux"):
        assert seen == {}, seen
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    (tmp_path / "control.sock").touch()  # a stale file (its process died): not listening, so it is taken
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=addr, curve_keys=str(keys["dir"])):
        pass


def test_allowed_client_is_served_refused_and_plaintext_clients_get_nothing(ck, keys, noisy_frames):
    x = noisy_frames(60)
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", curve_keys=str(keys["dir"])) as svc:
        a = svc.addresses
        alice_sub = Subscriber(a["pub"], streams="good", curve_keys=keys["alice"])
        alice_pub = Publisher(a["sub"], stream="good", curve_keys=keys["alice"])
        mallory_sub = Subscriber(a["pub"], curve_keys=keys["mallory"])
        plain_sub = Subscriber(a["pub"])
        mallory_pub = Publisher(a["sub"], stream="evil", curve_keys=keys["mallory"])
        plain_pub = Publisher(a["sub"], stream="plain")
        try:
            _until_flowing(alice_pub, alice_sub, x[0])
            # The intruders publish the whole time alice does; none of it may arrive.
            for i in range(60):
                mallory_pub.send(x[i])
                plain_pub.send(x[i])
                alice_pub.send(x[i], seq=1000 + i)
            got = []
            while sum(len(f) for _, f in got) < 60:
                h, f = alice_sub.recv(timeout=10)
                if h["seq"] >= 1000:
                    got.append((h, np.array(f)))
            seqs = [h["seq"] + j for h, f in got for j in range(len(f))]
            assert seqs == list(range(1000, 1060))
            # alice's frames are denoised as offline (a fresh context at the seq jump)
            np.testing.assert_allclose(np.concatenate([f for _, f in got]), denoise(x, model=ck), rtol=1e-5,
                                       atol=1e-3)
            assert _drain(mallory_sub, 0.3) == [] and _drain(plain_sub, 0.01) == []

            st = control(a["control"], "status", curve_keys=keys["alice"])
            assert st["ok"] and st["security"] == {"curve": True, "authorized_keys": 1, "control": "curve", "roles": {
                "publish": 1, "subscribe": 1, "control": 1, "stream_limited": 0}}
            assert set(st["streams"]) == {"good"}  # nothing from mallory or the plaintext publisher
            g = st["streams"]["good"]
            assert g["frames_in"] >= 60 + 1 and g["frames_out"] == g["frames_in"] and g["rejected"] == 0
            c = st["connections"]
            assert c["sub"].get("auth_refused", 0) >= 1 and c["pub"].get("auth_refused", 0) >= 1  # mallory
            assert c["sub"].get("handshake_failed", 0) >= 1 and c["pub"].get("handshake_failed", 0) >= 1  # plain
            assert c["sub"]["handshake_ok"] >= 1 and c["pub"]["handshake_ok"] >= 1  # alice
            from rtdenoise.stream.service import format_status

            assert "CURVE, 1 authorized" in format_status(st) and "auth_refused" in format_status(st)

            # the control socket: mallory and plaintext get no answer at all, and cannot stop it
            with pytest.raises(TimeoutError, match="authorized"):
                control(a["control"], "stop", curve_keys=keys["mallory"], timeout=0.5)
            with pytest.raises(TimeoutError, match="--client-key"):
                control(a["control"], "stop", timeout=0.5)
            # ...and alice is still served after all that
            alice_pub.send(x[:5], seq=1060)
            h, f = alice_sub.recv(timeout=10)
            assert h["seq"] == 1060 and svc.stats()["running"]
        finally:
            for c in (alice_sub, alice_pub, mallory_sub, plain_sub, mallory_pub, plain_pub):
                c.close()


def test_each_socket_admits_only_the_keys_of_its_role_and_a_publisher_only_its_streams(ck, tmp_path, noisy_frames):
    """A display's key cannot publish or stop the service; a rig's key publishes only to its
    streams and cannot read outputs; only a control key gets status."""
    d = tmp_path / "svc"
    security.create_keys(d)
    assert all((d / "authorized" / r).is_dir() for r in security.ROLES)
    security.make_keys(tmp_path / "rig", "rig", authorize=d, role="publish", streams=["rig-"])
    security.make_keys(tmp_path / "display", "display", authorize=d, role="subscribe")
    security.make_keys(tmp_path / "admin", "admin", authorize=d, role="control")
    keys = security.load_server_keys(d)
    assert keys.summary() == {"publish": 1, "subscribe": 1, "control": 1, "stream_limited": 1}

    def k(name):
        return tmp_path / name / f"{name}.key_secret", d / "server.key"

    x = noisy_frames(20)
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", curve_keys=str(d)) as svc:
        a = svc.addresses
        with Subscriber(a["pub"], curve_keys=k("display")) as display, \
                Publisher(a["sub"], stream="rig-1", curve_keys=k("rig")) as rig, \
                Publisher(a["sub"], stream="elsewhere", curve_keys=k("rig")) as rig_elsewhere, \
                Publisher(a["sub"], stream="rig-2", curve_keys=k("display")) as display_pub, \
                Subscriber(a["pub"], curve_keys=k("rig")) as rig_sub:
            _until_flowing(rig, display, x[0])
            for i in range(20):
                rig.send(x[i], seq=1000 + i)
                rig_elsewhere.send(x[i])
                display_pub.send(x[i])
            got = []
            while sum(len(f) for _, f in got) < 20:
                h, f = display.recv(timeout=10)
                assert h["stream"] == "rig-1"
                if h["seq"] >= 1000:
                    got.append((h, f))
            assert _drain(rig_sub, 0.3) == []  # a publisher's key reads nothing

            with pytest.raises(TimeoutError, match="authorized/control/"):
                control(a["control"], "stop", curve_keys=k("display"), timeout=0.5)
            with pytest.raises(TimeoutError):
                control(a["control"], "reset", curve_keys=k("rig"), timeout=0.5)
            st = control(a["control"], "status", curve_keys=k("admin"))
            assert set(st["streams"]) == {"rig-1"} and st["streams"]["rig-1"]["sender"] == "publish/rig"
            assert st["rejected_by_reason"].get("stream_not_allowed", 0) >= 1  # the rig's other stream
            assert st["security"]["roles"] == keys.summary()
            c = st["connections"]
            assert c["sub"]["auth_refused"] >= 1  # the display's publisher
            assert c["pub"]["auth_refused"] >= 1  # the rig's subscriber
            assert c["control"]["auth_refused"] >= 2  # display and rig
            assert svc.stats()["running"]


def test_key_folders_that_cannot_work_are_refused_with_the_fix(tmp_path):
    d = tmp_path / "svc"
    security.create_keys(d)
    security.make_keys(tmp_path / "v", "viewer", authorize=d, role="subscribe")
    (d / "authorized" / "subscribe" / "viewer.streams").write_text("v-\n")
    with pytest.raises(ValueError, match="only a key that may publish can be limited"):
        security.load_server_keys(d)
    (d / "authorized" / "subscribe" / "viewer.streams").unlink()
    security.make_keys(tmp_path / "r", "rig", authorize=d)
    (d / "authorized" / "rig.streams").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="lists no stream-name prefix"):
        security.load_server_keys(d)
    (d / "authorized" / "rig.streams").write_text("rig-  # its own\nshared\n")
    keys = security.load_server_keys(d)
    rig = next(k for k, n in keys.names.items() if n == "rig")
    assert keys.streams[rig] == ("rig-", "shared") and keys.roles_of(rig) == ["publish", "subscribe"]
    with pytest.raises(ValueError, match="a 'control' key publishes nothing"):
        security.make_keys(tmp_path / "c", "ctl", authorize=d, role="control", streams=["x"])
    with pytest.raises(ValueError, match="give --authorize"):
        security.make_keys(tmp_path / "c", "ctl", role="control")


def test_curve_with_the_service_input_connecting_to_a_binding_acquisition(ck, keys, noisy_frames):
    """The service stays the CURVE server when its input connects; the acquisition that binds is a client."""
    x = noisy_frames(30)
    # A port for the acquisition to bind: the service connects there.
    probe = zmq.Context.instance().socket(zmq.PUB)
    probe.bind(ANY)
    acq = probe.getsockopt(zmq.LAST_ENDPOINT).decode()
    probe.close(linger=0)
    with Service(model=ck, sub=acq, pub=ANY, control="ipc://*", curve_keys=str(keys["dir"])) as svc:
        with Subscriber(svc.pub_address, streams="rep", curve_keys=keys["alice"]) as sub:
            result = []
            th = threading.Thread(target=lambda: result.append(replay(
                x, pub=acq, stream="rep", rate_hz=200.0, wait_s=1.0, curve_keys=keys["alice"])), daemon=True)
            th.start()
            got = []
            while sum(len(f) for _, f in got) < 30:
                h, f = sub.recv(timeout=10)
                got.append((h, np.array(f)))
            th.join(10)
    assert result and result[0]["frames"] == 30
    assert [h["seq"] + j for h, f in got for j in range(len(f))] == list(range(30))
    np.testing.assert_allclose(np.concatenate([f for _, f in got]), denoise(x, model=ck), rtol=1e-5, atol=1e-3)


def test_cli_serve_refuses_to_start_with_missing_keys(tmp_path, capsys):
    from rtdenoise.cli import main

    rc = main(["serve", "--curve-keys", str(tmp_path / "nope"), "--bind-sub", "--sub", ANY, "--pub", ANY,
               "--control", ANY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rtdenoise serve: error:" in err and "rtdenoise keys" in err


def test_cli_status_with_and_without_client_keys(ck, keys, capsys):
    from rtdenoise.cli import main

    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", curve_keys=str(keys["dir"])) as svc:
        ctl = svc.control_address
        a_sec, s_pub = keys["alice"]
        assert main(["status", "--control", ctl, "--client-key", str(a_sec), "--server-key", str(s_pub)]) == 0
        assert "security: CURVE" in capsys.readouterr().out
        assert main(["status", "--control", ctl, "--timeout", "0.3"]) == 2
        assert "--client-key" in capsys.readouterr().err
        assert main(["status", "--control", ctl, "--client-key", str(a_sec)]) == 2
        assert "go together" in capsys.readouterr().err


# ----------------------------------------------------------------------------- binding


def test_loopback_by_default_and_the_warning_says_how_to_turn_on_curve(ck, keys):
    from rtdenoise.stream.service import ServiceConfig

    c = ServiceConfig()
    assert all(security.is_loopback(getattr(c, k)) for k in ("sub", "pub", "control"))
    for addr in ("tcp://127.0.0.1:*", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x", "inproc://x"):
        assert security.is_loopback(addr), addr
    for addr in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.2:5555", "tcp://eth0:5555", "udp://127.0.0.1:1"):
        assert not security.is_loopback(addr), addr
    with pytest.warns(RuntimeWarning, match=r"--curve-keys DIR.*rtdenoise keys|rtdenoise keys.*--curve-keys"):
        Service(model=ck, sub=ANY, bind_sub=True, pub="tcp://0.0.0.0:*", control="ipc://*").stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with CURVE on, binding every interface is fine
        svc = Service(model=ck, sub=ANY, bind_sub=True, pub="tcp://0.0.0.0:*", control="ipc://*",
                      curve_keys=str(keys["dir"]))
        assert svc.stats()["security"]["curve"]
        svc.stop()


def test_control_is_local_ipc_by_default_and_plaintext_tcp_control_needs_a_flag(ck, keys, tmp_path):
    from rtdenoise.stream.service import ServiceConfig

    assert ServiceConfig().control.startswith("ipc://")
    with pytest.raises(ValueError, match="--allow-tcp-control"):
        ServiceConfig(control="tcp://127.0.0.1:5557").validate()
    ServiceConfig(control="tcp://127.0.0.1:5557", allow_tcp_control=True).validate()
    ServiceConfig(control="tcp://127.0.0.1:5557", curve_keys=str(keys["dir"])).validate()  # CURVE: control keys only

    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        path = Path(svc.control_address[len("ipc://"):])
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600  # this user only
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert control(svc.control_address, "status")["security"]["control"] == "ipc"
        # libzmq would silently take the path over from the running service: refused instead
        with pytest.raises(ValueError, match="another process is listening there"):
            Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=svc.control_address)
        assert control(svc.control_address, "status")["ok"]
    assert not path.parent.exists()  # the private folder of ipc://* goes with the service

    # a socket file left by a service that died (kill -9) is replaced; a missing folder is made private
    import socket

    stale = tmp_path / "run" / "ctl"
    stale.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=f"ipc://{stale}") as svc:
        assert control(svc.control_address, "status")["ok"]
    fresh = tmp_path / "new" / "ctl"
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=f"ipc://{fresh}") as svc:
        assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
        assert control(svc.control_address, "status")["ok"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    try:
        os.chown(theirs, 4242, 4242)  # another user's folder: only root can make one here
    except PermissionError:
        return
    with pytest.raises(ValueError, match="belongs to another user"):
        Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=f"ipc://{theirs}/ctl")


def test_one_sender_cannot_fill_the_stream_table(ck, noisy_frames):
    """Without CURVE the sender is the peer address: every local publisher shares 127.0.0.1."""
    x = noisy_frames(3)
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_streams_per_sender=2) as svc:
        pubs = [Publisher(svc.sub_address, stream=f"s{i}") for i in range(3)]
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for p in pubs:
                    p.send(x[0])
                st = svc.stats()
                if st["n_streams"] == 2 and st["rejected_by_reason"].get("too_many_sender_streams"):
                    break
                time.sleep(0.05)
            assert st["n_streams"] == 2 and st["rejected_by_reason"]["too_many_sender_streams"] >= 1
            assert {s["sender"] for s in st["streams"].values()} == {"127.0.0.1"}
            assert st["max_streams_per_sender"] == 2
        finally:
            for p in pubs:
                p.close()


# ----------------------------------------------------------------------------- no pickle


def test_checkpoints_load_only_weights_a_pickled_object_never_runs(ck, tmp_path):
    import torch

    from rtdenoise.model.checkpoint import load

    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    bad = tmp_path / "evil.pt"
    good = tmp_path / "good.pt"
    ck.save(good)
    d = torch.load(good, weights_only=True)
    d["evil"] = Evil()
    torch.save(d, bad)
    with pytest.raises(Exception):
        load(bad)
    assert not ran.exists()
    with pytest.raises(Exception):
        Service(model=str(bad), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*")
    assert not ran.exists()


def test_no_pickle_anywhere_and_every_torch_load_is_weights_only():
    """Source check over the package: nothing unpickles (wire, control, files)."""
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names), path
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("recv_pyobj", "send_pyobj", "recv_serialized", "loads_pyobj"), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                        f"{path}:{node.lineno}: torch.load without weights_only=True"
                if isinstance(base, ast.Name) and base.id == "np":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False, \
                        f"{path}:{node.lineno}: np.load without allow_pickle=False"
    assert pickle  # (imported here only to build the hostile checkpoint above)


def test_security_docstring_example_runs():
    import doctest

    assert doctest.testmod(security).failed == 0
