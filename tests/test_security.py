"""Security of the live service: CURVE keys, allowed and refused clients, loopback by default, no pickle.

Every service here runs in-process on ``tcp://127.0.0.1:*`` ports. "Gets nothing" is
checked by waiting a bounded time while an allowed client, on the same service, gets
its frames; libzmq's own monitor events say why the others got nothing.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import stat
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
    (server / "authorized" / "alice.key").write_bytes(a_pub.read_bytes())
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
    kw = dict(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=ANY)
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


def test_allowed_client_is_served_refused_and_plaintext_clients_get_nothing(ck, keys, noisy_frames):
    x = noisy_frames(60)
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=ANY, curve_keys=str(keys["dir"])) as svc:
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
            assert st["ok"] and st["security"] == {"curve": True, "authorized_keys": 1}
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


def test_curve_with_the_service_input_connecting_to_a_binding_acquisition(ck, keys, noisy_frames):
    """The service stays the CURVE server when its input connects; the acquisition that binds is a client."""
    x = noisy_frames(30)
    # A port for the acquisition to bind: the service connects there.
    probe = zmq.Context.instance().socket(zmq.PUB)
    probe.bind(ANY)
    acq = probe.getsockopt(zmq.LAST_ENDPOINT).decode()
    probe.close(linger=0)
    with Service(model=ck, sub=acq, pub=ANY, control=ANY, curve_keys=str(keys["dir"])) as svc:
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

    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control=ANY, curve_keys=str(keys["dir"])) as svc:
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
        Service(model=ck, sub=ANY, bind_sub=True, pub="tcp://0.0.0.0:*", control=ANY).stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with CURVE on, binding every interface is fine
        svc = Service(model=ck, sub=ANY, bind_sub=True, pub="tcp://0.0.0.0:*", control=ANY,
                      curve_keys=str(keys["dir"]))
        assert svc.stats()["security"]["curve"]
        svc.stop()


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
        Service(model=str(bad), sub=ANY, bind_sub=True, pub=ANY, control=ANY)
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
