"""The live service over real sockets on 127.0.0.1 (random ports), plus replay and the CLI verbs.

The service runs in threads in-process; one test runs ``rtdenoise serve`` as a real
subprocess. Every receive has a timeout. The reference for every stream is offline
:func:`rtdenoise.denoise.denoise` of the same checkpoint on the same frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from rtdenoise.denoise import denoise
from rtdenoise.stream import Service, Subscriber, control, replay, wire
from rtdenoise.stream.control import format_status

pytestmark = pytest.mark.timeout(60)

ANY = "tcp://127.0.0.1:*"
FS = 5.0
T0 = 1_700_000_000_000_000_000
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    """``ckpt(arch, lag) -> Checkpoint``: conftest's tiny random models, one seed per lag."""
    return lambda arch="spectral", lag=0: tiny_checkpoint(arch, lag, seed=lag)


@pytest.fixture(scope="module")
def rec():
    """``rec(n, seed=0) -> (n, 152) float32`` synthetic noisy counts."""
    from rtdenoise.synth import simulate

    return lambda n, seed=0: simulate(n, seed=seed, photons=2000)["noisy"]


def t_of(seq: int) -> int:
    return T0 + round(seq * 1e9 / FS)


class Rig:
    """A running service, one raw PUB socket feeding it and a Subscriber on its output."""

    def __init__(self, svc: Service):
        self.svc = svc
        self.pub = zmq.Context.instance().socket(zmq.PUB)
        self.pub.connect(svc.sub_address)
        self.sub = Subscriber(svc.pub_address)
        self.got: dict[str, list] = {}
        self.probe_seq = 0
        # Slow joiner: both connections are up once a probe frame comes back denoised.
        deadline = time.monotonic() + 10
        while not self.got.get("probe"):
            assert time.monotonic() < deadline, "service never answered the probe"
            self.send("probe", np.full((1, 152), 100.0, np.float32), self.probe_seq)
            self.probe_seq += 1
            with contextlib.suppress(TimeoutError):
                self._recv(0.05)

    def send(self, stream, frames, seq, *, t_ns=None, fs=FS, meta=None):
        self.pub.send_multipart(wire.encode_frames(stream, frames, seq=seq, t_ns=t_of(seq) if t_ns is None else t_ns,
                                                   fs=fs, meta=meta))

    def send_all(self, stream, frames, *, chunk=1, first_seq=0):
        for i in range(0, len(frames), chunk):
            self.send(stream, frames[i:i + chunk], first_seq + i)

    def _recv(self, timeout):
        h, f = self.sub.recv(timeout=timeout)
        self.got.setdefault(h["stream"], []).append((h, np.array(f)))

    def collect(self, stream, n_frames, timeout=10.0):
        """Messages of ``stream`` until ``n_frames`` frames in all arrived (cumulative)."""
        deadline = time.monotonic() + timeout
        while sum(len(f) for _, f in self.got.get(stream, [])) < n_frames:
            left = deadline - time.monotonic()
            have = sum(len(f) for _, f in self.got.get(stream, []))
            if left <= 0:
                raise AssertionError(f"{stream}: {have} of {n_frames} frames arrived; status: "
                                     f"{json.dumps(self.svc.stats()['streams'].get(stream))}")
            with contextlib.suppress(TimeoutError):
                self._recv(min(left, 0.2))
        return self.got[stream]

    def quiet(self, stream, settle=0.3):
        """Receive until nothing more arrives for ``settle`` s; return all of ``stream``."""
        while True:
            try:
                self._recv(settle)
            except TimeoutError:
                return self.got.get(stream, [])

    def status(self):
        reply = control(self.svc.control_address, "status", timeout=5)
        assert reply["ok"], reply
        return reply

    def close(self):
        self.pub.close(linger=0)
        self.sub.close()


@contextlib.contextmanager
def rig(model, **kw):
    with Service(model=model, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", **kw) as svc:
        r = Rig(svc)
        try:
            yield r
        finally:
            r.close()


def _wait_for_resets(svc, stream: str, n: int, timeout: float = 5.0) -> None:
    """Until the service has done ``n`` resets of ``stream`` (or the timeout; the caller's assert says)."""
    deadline = time.monotonic() + timeout
    while svc.stats()["streams"][stream]["resets"] < n and time.monotonic() < deadline:
        time.sleep(0.01)


def frames_of(messages):
    return np.concatenate([f for _, f in messages])


def check_headers(messages, *, first_seq, lag, model, rf):
    seq = first_seq
    for h, f in messages:
        assert h["seq"] == seq and h["n"] == len(f) and f.shape[1:] == (152,) and f.dtype == np.float32
        assert h["dtype"] == "<f4" and h["shape"] == [152]
        assert h["lag"] == lag and h["model"] == model and h["fs"] == FS
        assert h["t_ns"] == t_of(seq)  # the output frame's own acquisition time, not the trigger's
        assert h["t_recv_ns"] <= h["t_pub_ns"]
        seq += len(f)
    return seq


def assert_same(got, ref):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


# ----------------------------------------------------------------------------- equals offline


@pytest.mark.parametrize(
    "arch,lag,chunk,spin",
    [
        pytest.param("spectral", 0, 1, False, id="lag0-chunk1"),
        pytest.param("spectral", 0, 5, False, id="lag0-chunk5"),
        pytest.param("subspace", 2, 1, False, id="lag2-chunk1"),
        pytest.param("subspace", 2, 5, False, id="lag2-chunk5"),
        pytest.param("spectral", 0, 1, True, id="lag0-chunk1-spin"),  # latency mode: one polling thread
        pytest.param("subspace", 2, 5, True, id="lag2-chunk5-spin"),
    ],
)
def test_stream_equals_offline(ckpt, rec, arch, lag, chunk, spin):
    ck = ckpt(arch, lag)
    x = rec(120)
    ref = denoise(x, model=ck)
    with rig(ck, spin=spin) as r:
        assert sorted(t.name for t in r.svc._threads) == (
            ["rtdenoise-control", "rtdenoise-spin"] if spin else
            ["rtdenoise-control", "rtdenoise-engine", "rtdenoise-receive"])
        assert r.status()["spin"] is spin
        r.send_all("rig1", x, chunk=chunk)
        msgs = r.collect("rig1", 120 - lag)  # the last `lag` frames wait for their future...
        time.sleep(0.2)
        assert r.status()["streams"]["rig1"]["in_flight"] == lag
        assert sum(len(f) for _, f in r.quiet("rig1")) == 120 - lag
        assert control(r.svc.control_address, "reset", stream="rig1")["ok"]  # ...or a reset flushes them
        msgs = r.collect("rig1", 120)
        rf = r.svc.engine.receptive_field
        _wait_for_resets(r.svc, "rig1", 1)  # a reset is answered when asked, done at the engine's next turn
    assert_same(frames_of(msgs), ref)
    assert check_headers(msgs, first_seq=0, lag=lag, model=ck.name, rf=rf) == 120
    assert all(h["gap"] == 0 for h, _ in msgs)
    # warm: every frame of the message had a full context (output s saw s + lag + 1 inputs)
    for h, _ in msgs:
        assert h["warm"] == (h["seq"] + 1 >= rf), h
    assert not msgs[0][0]["warm"]
    assert {h["epoch"] for h, _ in msgs} == {r.svc.stats()["epoch"]}  # the service's, in every output
    s = r.svc.stats()["streams"]["rig1"]
    assert (s["frames_in"], s["frames_out"], s["in_flight"], s["gaps"], s["resets"]) == (120, 120, 0, 0, 1)


def test_a_gpu_engine_is_warmed_up_before_the_first_frame_and_never_kept_busy(ckpt, rec):
    """A GPU engine's first step loads its kernels (0.2 s on an H200): the service takes it at
    start, on a scratch state, and its spin loop does not step it while idle. Checked with a
    CPU engine that says it is on a GPU."""
    from rtdenoise.backends import load_engine

    ck = ckpt("spectral", 0)
    x = rec(40)
    eng = load_engine(ck, backend="torch", device="cpu")
    eng.gpu = True
    calls = []  # (thread, frames) of every step
    step = eng.step
    eng.step = lambda *a, **k: calls.append((threading.current_thread().name, a[0].shape)) or step(*a, **k)
    with rig(ck, engine=eng, spin=True) as r:
        assert calls[0] == (threading.current_thread().name, (1, 1, 152))  # the warm-up, in start()
        r.send_all("g", x)
        msgs = r.collect("g", 40)
        n = len(calls)
        time.sleep(0.1)  # idle: a CPU engine would be stepped on scratch every millisecond now
        assert len(calls) == n and r.svc._warm is None
        assert {t for t, _ in calls[1:]} == {"rtdenoise-spin"}
    assert_same(frames_of(msgs), denoise(x, model=ck))  # the scratch state touched no stream


def test_warm_shapes_are_stepped_at_each_group_size_and_a_wrong_one_fails_before_binding(ckpt, rec):
    """``warm_shapes``: a GPU sets up its kernels per input shape, so the service steps each
    given frame shape at start at every size its group grows through."""
    from rtdenoise.backends import load_engine

    ck = ckpt("spectral", 0)
    x = rec(20)
    eng = load_engine(ck, backend="torch", device="cpu")
    calls = []
    step = eng.step
    eng.step = lambda *a, **k: calls.append(a[0].shape) or step(*a, **k)
    with rig(ck, engine=eng, warm_shapes=((152,),), max_batch=6) as r:
        assert calls[:5] == [(1, 1, 152), (2, 1, 152), (4, 1, 152), (6, 1, 152), (1, 152)]  # then the rig's probe
        r.send_all("w", x)
        msgs = r.collect("w", 20)
    assert_same(frames_of(msgs), denoise(x, model=ck))  # the scratch states touched no stream
    with socket.socket() as s:  # a free port, to bind twice below
        s.bind(("127.0.0.1", 0))
        sub = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ValueError, match="warm shape 151: not a frame of model"):
        Service(model=ck, sub=sub, bind_sub=True, pub=ANY, control="ipc://*", warm_shapes=((151,),))
    with Service(model=ck, sub=sub, bind_sub=True, pub=ANY, control="ipc://*"):
        pass  # nothing was left bound


# ----------------------------------------------------------------------------- seq gaps, restarts


def test_gap_resets_context_and_is_flagged_restart_is_counted(ckpt, rec):
    ck = ckpt("spectral", 2)
    x = rec(120)
    with rig(ck) as r:
        r.send_all("g", x[:60])  # seq 0..59
        r.send_all("g", x[70:], first_seq=70)  # seq 60..69 never sent
        msgs = r.collect("g", 60 + 48)
        st = r.status()["streams"]["g"]
        assert (st["gaps"], st["frames_missing"], st["restarts"]) == (1, 10, 0)

        # Before the gap: as offline on frames 0..59 (the lag's 2 frames flushed at the gap).
        pre = [(h, f) for h, f in msgs if h["seq"] < 60]
        post = [(h, f) for h, f in msgs if h["seq"] >= 70]
        assert frames_of(pre).shape[0] == 60 and all(h["gap"] == 0 for h, _ in pre)
        assert_same(frames_of(pre), denoise(x[:60], model=ck))
        # After the gap: a fresh context, as offline on the post-gap frames; the first
        # output message after the gap says how many frames are missing.
        assert post[0][0]["seq"] == 70 and post[0][0]["gap"] == 10 and not post[0][0]["warm"]
        assert all(h["gap"] == 0 for h, _ in post[1:])
        assert_same(frames_of(post), denoise(x[70:], model=ck)[:48])
        check_headers(post, first_seq=70, lag=2, model=ck.name, rf=r.svc.engine.receptive_field)

        # seq going back: a restarted acquisition, counted, context reset, no gap flagged.
        r.send_all("g", x[:20])
        msgs = r.collect("g", 60 + 50 + 18)
        st = r.status()["streams"]["g"]
        assert (st["gaps"], st["restarts"], st["frames_in"]) == (1, 1, 130)
        again = msgs[len(pre) + len(post):]
        assert [h["seq"] for h, _ in again][:1] == [118]  # the flush of 118, 119 first
        restarted = [(h, f) for h, f in again if h["seq"] < 20]
        assert all(h["gap"] == 0 for h, _ in again)
        assert_same(frames_of(restarted), denoise(x[:20], model=ck)[:18])


# ----------------------------------------------------------------------------- streams independent


def test_two_interleaved_streams_do_not_disturb_each_other(ckpt, rec):
    ck = ckpt("subspace", 0)
    a, b = rec(60, seed=1), rec(60, seed=2) * 3.0
    with rig(ck) as r:
        for i in range(0, 60, 3):
            r.send("a", a[i:i + 3], i)
            for j in range(i, i + 3):
                r.send("b", b[j:j + 1], 1000 + j)
        ma, mb = r.collect("a", 60), r.collect("b", 60)
        st = r.status()
    assert_same(frames_of(ma), denoise(a, model=ck))
    assert_same(frames_of(mb), denoise(b, model=ck))
    assert mb[0][0]["seq"] == 1000
    assert {st["streams"][s]["frames_out"] for s in "ab"} == {60}
    assert st["n_streams"] == 3  # a, b and the probe


@pytest.mark.parametrize("max_batch", [16, 1])
def test_sixteen_streams_stepped_together_equal_offline(ckpt, rec, max_batch, monkeypatch):
    from rtdenoise.stream.batch import Group

    monkeypatch.setattr(Group, "worth", lambda self, seqs: True)  # whether a call pays is measured: here it always does
    ck = ckpt("subspace", 2)
    recs = {f"rig{k:02d}": rec(40, seed=k) * (1 + k / 8) for k in range(16)}
    with rig(ck, max_batch=max_batch) as r:
        for i in range(40):  # one frame of every stream per round, as 16 rigs at one rate
            for name, x in recs.items():
                r.send(name, x[i:i + 1], i)
        got = {name: r.collect(name, 40 - 2) for name in recs}  # lag 2: the last 2 wait for the flush
        for name in recs:
            control(r.svc.control_address, "reset", stream=name)
        got = {name: r.collect(name, 40) for name in recs}
        st = r.status()
    for name, x in recs.items():
        assert_same(frames_of(got[name]), denoise(x, model=ck))
    b = st["batch"]
    assert b["max_batch"] == max_batch and b["members"] == 17  # and the probe
    if max_batch > 1:
        assert b["groups"] == 2 and b["slots"] == 16 + 1 and b["batched_frames"] > b["batched_calls"] > 0
        assert "frames stepped together" in format_status(st)
    else:
        assert b["groups"] == 17 and b["batched_calls"] == 0


# ----------------------------------------------------------------------------- malformed input


def test_malformed_messages_are_counted_and_the_good_stream_flows(ckpt, rec):
    ck = ckpt("spectral", 0)
    x = rec(40)
    bad_nan = x[5:6].copy()
    bad_nan[0, 7] = np.nan
    with rig(ck, max_streams=3) as r:  # probe + good + one more
        good = wire.encode_frames("good", x[:1], seq=0, t_ns=0)
        for i in range(40):
            if i == 5:
                raw = r.pub
                raw.send_multipart(good[:2])  # wrong part count
                raw.send_multipart([b"frames/good", b"\xc1", bytes(good[2])])  # garbage header
                raw.send_multipart([b"frames/good", good[1], bytes(good[2])[:-2]])  # payload size
                h = msgpack.unpackb(good[1])
                raw.send_multipart([b"frames/good", msgpack.packb({**h, "v": 2}), bytes(good[2])])
                r.send("good", x[5:6, :150], 5)  # shape change mid-stream, same seq
                r.send("good", x[5:6].astype("<f8"), 5)  # dtype change
                r.send("good", bad_nan, 5)  # NaN frame
                r.send("other", x[:1, :100], 0)  # not the model's frame shape
                r.send("third", x[:1], 0)  # fills max_streams
                r.send("fourth", x[:1], 0)  # one too many
            r.send("good", x[i:i + 1], i)
        msgs = r.collect("good", 40)
        st = r.status()
        assert r.svc.stats()["running"]  # nothing above stopped it
    assert_same(frames_of(msgs), denoise(x, model=ck))
    assert all(h["gap"] == 0 for h, _ in msgs)
    assert st["rejected_by_reason"] == {
        "parts": 1, "header_msgpack": 1, "payload_size": 1, "version": 1, "shape_change": 1,
        "dtype_change": 1, "bad_frames": 1, "frame_shape": 1, "too_many_streams": 1,
    }
    g = st["streams"]["good"]
    assert (g["frames_in"], g["frames_out"], g["gaps"], g["rejected"]) == (40, 40, 0, 3)
    assert g["rejected_by_reason"] == {"shape_change": 1, "dtype_change": 1, "bad_frames": 1}
    assert sorted(st["streams"]) == ["good", "probe", "third"]


class _SlowEngine:
    """An engine that takes ``delay`` s per step, so a burst outruns it."""

    def __init__(self, engine, delay):
        self._e, self._delay = engine, delay

    def __getattr__(self, name):
        return getattr(self._e, name)

    def step(self, x, state, **kw):
        time.sleep(self._delay)
        return self._e.step(x, state, **kw)


def test_overflow_drops_oldest_and_counts_every_frame(ckpt, rec):
    from rtdenoise.backends import load_engine

    ck = ckpt("spectral", 0)
    x = rec(100)
    engine = _SlowEngine(load_engine(ck), 0.02)
    with Service(engine=engine, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_queue=4) as svc:
        r = Rig(svc)
        try:
            r.send_all("burst", x)
            msgs = r.collect("burst", 1)
            deadline = time.monotonic() + 10
            while True:
                s = r.status()["streams"]["burst"]
                if s["frames_in"] == 100 and s["queue_depth"] == 0 and \
                        s["frames_out"] + s["dropped"] + s["discarded"] == 100:
                    break
                assert time.monotonic() < deadline, s
                time.sleep(0.05)
            msgs = r.quiet("burst")
        finally:
            r.close()
    assert s["dropped"] > 0 and s["gaps"] == 0 and s["in_flight"] == 0  # drops are not upstream gaps
    assert sum(len(f) for _, f in msgs) == s["frames_out"]
    assert sum(h["gap"] for h, _ in msgs) == s["dropped"]  # every drop flagged downstream
    assert msgs[-1][0]["seq"] + msgs[-1][0]["n"] == 100  # the newest frames survive
    assert s["stages_ms"]["engine"]["p50"] >= 15


class _Counting:
    """An engine that counts frame checks and records whether each step was told the frames were checked."""

    def __init__(self, engine):
        self._e, self.checks, self.steps = engine, 0, []

    def __getattr__(self, name):
        return getattr(self._e, name)

    def check_frames(self, frames, **kw):
        self.checks += 1
        return self._e.check_frames(frames, **kw)

    def step(self, x, state, **kw):
        self.steps.append(kw.get("checked", False))
        return self._e.step(x, state, **kw)


def test_frames_are_validated_once_on_arrival_and_stepped_as_checked(ckpt, rec):
    """The hot path: a message's frames are checked once (admission, receive thread), never again by the step."""
    from rtdenoise.backends import load_engine

    ck = ckpt("spectral", 0)
    x = rec(20)
    bad = x[:1].copy()
    bad[0, 3] = np.inf
    engine = _Counting(load_engine(ck))
    with Service(engine=engine, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        r = Rig(svc)
        try:
            r.send("once", bad, 0)  # refused on arrival (bad_frames): never stepped
            r.send_all("once", x, chunk=2, first_seq=1)
            msgs = r.collect("once", 20)
            st = r.status()
        finally:
            r.close()
    assert_same(frames_of(msgs), denoise(x, model=ck))
    assert st["rejected_by_reason"] == {"bad_frames": 1}
    assert engine.checks == st["messages_in"]  # every message passed the stream rules: checked exactly once
    assert engine.steps and all(engine.steps)  # and stepped without a second validation


# ----------------------------------------------------------------------------- control


def test_control_status_reset_stop_and_errors(ckpt, rec):
    ck = ckpt("spectral", 0)
    svc = Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*").start()
    addr = svc.control_address
    try:
        r = Rig(svc)
        st = control(addr, "status")
        assert st["ok"] and st["model"] == ck.name and st["backend"] == "torch" and st["lag"] == 0
        assert st["uptime_s"] > 0 and st["n_streams"] == 1 and st["rejected_by_reason"] == {}
        p = st["streams"]["probe"]
        for key in ("frames_in", "frames_out", "gaps", "frames_missing", "restarts", "dropped", "rejected",
                    "queue_depth", "warm", "latency_ms", "stages_ms"):
            assert key in p
        assert set(p["latency_ms"]) == {"n", "p50", "p90", "p99", "max"} and p["latency_ms"]["n"] >= 1
        assert control(addr, "reset", stream="probe") == {"ok": True, "reset": ["probe"]}
        _wait_for_resets(svc, "probe", 1)  # answered when asked, done at the engine's next turn
        bad = control(addr, "reset", stream="nope")
        assert not bad["ok"] and "nope" in bad["error"]
        unknown = control(addr, "explode")
        assert not unknown["ok"] and "unknown command" in unknown["error"]

        req = zmq.Context.instance().socket(zmq.REQ)
        req.connect(addr)
        for raw, ok in ((b"{not json", False), (b"[1, 2]", False), (b"\xff\xfe", False), (b"status", True),
                        (b"reset probe", True)):
            req.send(raw)
            assert req.poll(5000)
            assert json.loads(req.recv())["ok"] is ok, raw
        req.send_multipart([b"status", b"extra"])
        assert req.poll(5000) and not json.loads(req.recv())["ok"]
        req.close(linger=0)
        r.close()
        _wait_for_resets(svc, "probe", 2)

        assert control(addr, "stop") == {"ok": True, "stopping": True}
        assert svc.wait(5)
    finally:
        final = svc.stop()
    assert not final["running"] and final["streams"]["probe"]["resets"] == 2
    with pytest.raises(TimeoutError, match="no reply"):
        control(addr, "status", timeout=0.2)


def test_bad_model_path_and_busy_address_fail_at_construction(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Service(model=str(tmp_path / "nope.pt"), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*")
    ck = ckpt("spectral", 0)
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        with pytest.raises(ValueError, match=re.escape(svc.pub_address)):
            Service(model=ck, sub=ANY, bind_sub=True, pub=svc.pub_address, control="ipc://*")
    with pytest.warns(RuntimeWarning, match="reachable from other machines"):
        Service(model=ck, sub=ANY, bind_sub=True, pub="tcp://0.0.0.0:*", control="ipc://*").stop()


# ----------------------------------------------------------------------------- replay


def test_docstring_examples_run():
    import doctest
    import importlib

    # (rtdenoise.stream.replay, the attribute, is the function re-exported over its module)
    mod = importlib.import_module("rtdenoise.stream.replay")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0


def _in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; returns (thread, result list). The caller keeps receiving:
    a SUB socket only sends its subscription once its own thread touches it."""
    result = []
    t = threading.Thread(target=lambda: result.append(fn(*args, **kwargs)), daemon=True)
    t.start()
    return t, result


def _recv_n(sub, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n:
        got.append(sub.recv(timeout=max(0.01, deadline - time.monotonic())))
    return got


def test_replay_paces_at_the_rate_and_everything_arrives(tmp_path, rec):
    path = tmp_path / "rec.npy"
    np.save(path, rec(50).astype("<u2"))
    with Subscriber(ANY, kind="frames", bind=True) as sub:
        t = time.perf_counter()
        th, result = _in_thread(replay, path, pub=sub.address, bind=False, stream="rep", rate_hz=200.0, wait_s=0.3)
        got = _recv_n(sub, 50)
        th.join(10)
        wall = time.perf_counter() - t
    s = result[0]
    assert s["frames"] == 50 and s["messages"] == 50 and s["next_seq"] == 50
    assert s["seconds"] >= 0.245 and wall >= 0.245 + 0.3
    assert s["seconds"] < 1.0  # not grossly slow either
    assert [h["seq"] for h, _ in got] == list(range(50))
    t_ns = np.array([h["t_ns"] for h, _ in got])
    assert set(np.diff(t_ns)) == {5_000_000}  # intended send times, exactly 1/rate apart
    assert all(h["fs"] == 200.0 and h["dtype"] == "<u2" for h, _ in got)
    np.testing.assert_array_equal(np.concatenate([f for _, f in got]), np.load(path))


def test_replay_chunks_loop_and_duration_through_the_service(ckpt, rec):
    ck = ckpt("spectral", 0)
    x = rec(20)
    with rig(ck) as r:
        s = replay(x, pub=r.svc.sub_address, bind=False, stream="loop", rate_hz=400.0, chunk=3, loop=True,
                   duration=0.1, wait_s=0.3, start_seq=7)
        msgs = r.collect("loop", s["frames"])
    # 0.1 s at 400 Hz = 40 frames: 20, then the recording again (chunks of 3, the last of each pass 2)
    assert (s["frames"], s["messages"], s["loops"], s["next_seq"]) == (40, 14, 1, 47)
    assert check_headers_loose(msgs, 7) == 7 + 40
    assert r.svc.stats()["streams"]["loop"]["gaps"] == 0


def check_headers_loose(msgs, seq):
    for h, f in msgs:
        assert h["seq"] == seq and h["fs"] == 400.0
        seq += len(f)
    return seq


# ----------------------------------------------------------------------------- CLI


def _start_serve(model_path):
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdenoise.cli", "serve", "--model", str(model_path), "--bind-sub",
         "--sub", ANY, "--pub", ANY, "--control", "ipc://*", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    if not line or "ready" not in line[0]:
        proc.kill()
        raise AssertionError(f"serve did not get ready: {line} {proc.stderr.read()}")
    return proc, dict(re.findall(r"(\w+)=(\S+)", line[0]))


@pytest.mark.slow  # two interpreter starts with torch: ~4 s each on a busy 2-core machine
def test_cli_serve_subprocess_status_stop_and_sigterm(ckpt, rec, tmp_path, capsys):
    from rtdenoise.cli import main

    model = tmp_path / "tiny.pt"
    ckpt("spectral", 0).save(model)
    procs = []
    try:
        proc, a = _start_serve(model)
        procs.append(proc)
        assert a["model"] == "tiny-spectral-lag0" and a["lag"] == "0"
        # frames through the subprocess
        with Subscriber(a["pub"], streams="cli") as sub:
            pub = zmq.Context.instance().socket(zmq.PUB)
            pub.connect(a["sub"])
            x, seq = rec(10), 0
            deadline = time.monotonic() + 10
            while True:
                pub.send_multipart(wire.encode_frames("cli", x[seq % 10:seq % 10 + 1], seq=seq, t_ns=0))
                seq += 1
                with contextlib.suppress(TimeoutError):
                    h, _ = sub.recv(timeout=0.05)
                    break
                assert time.monotonic() < deadline
            pub.close(linger=0)
        assert main(["status", "--control", a["control"]]) == 0
        out = capsys.readouterr().out
        assert "tiny-spectral-lag0" in out and re.search(r"^cli\s+\d+", out, re.M)
        assert main(["status", "--control", a["control"], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["streams"]["cli"]["frames_out"] >= 1

        assert control(a["control"], "stop")["ok"]
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "stopped" in out and "cli" in out

        proc, a = _start_serve(model)
        procs.append(proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    # a dead control address: a clear error and exit 2, never a hang
    assert main(["status", "--control", a["control"], "--timeout", "0.2"]) == 2
    assert "no reply" in capsys.readouterr().err


def test_cli_replay(tmp_path, rec, capsys):
    from rtdenoise.cli import main

    path = tmp_path / "rec.npz"
    np.savez(path, noisy=rec(8))
    with Subscriber(ANY, kind="frames", bind=True) as sub:
        th, rc = _in_thread(main, ["replay", str(path), "--pub", sub.address, "--connect", "--rate", "100",
                                   "--chunk", "4", "--stream", "c", "--wait", "0.3"])
        (h, f), _ = _recv_n(sub, 2)
        th.join(10)
    assert rc == [0]
    assert (h["stream"], h["n"], f.shape) == ("c", 4, (4, 152))
    assert "replayed 8 frames" in capsys.readouterr().out


@pytest.mark.parametrize("bad,says", [
    (np.full((6, 16, 16), np.nan, np.float32), "NaN"),
    (np.zeros((5, 16, 16, 3), np.uint8), "colour"),
    (np.zeros((3, 4, 8, 8), np.uint16), "(T, H, W)"),
])
def test_cli_replay_refuses_what_the_service_would_reject_before_sending(tmp_path, capsys, bad, says):
    from rtdenoise.cli import main

    np.save(tmp_path / "bad.npy", bad)
    with Subscriber(ANY, kind="frames", bind=True) as sub:
        assert main(["replay", str(tmp_path / "bad.npy"), "--pub", sub.address, "--connect", "--rate", "100"]) == 2
        with pytest.raises(TimeoutError):  # nothing was published
            sub.recv(timeout=0.3)
    err = capsys.readouterr().err
    assert "bad.npy" in err and says in err, err


def test_control_requests_are_handled_without_sockets():
    import doctest
    import importlib

    from rtdenoise.stream.control import handle

    # (rtdenoise.stream.control, the attribute, is the client function re-exported over its module)
    control_module = importlib.import_module("rtdenoise.stream.control")

    resets = []

    def reset(stream):
        resets.append(stream)
        return {"ok": True, "reset": [stream]}

    def ask(raw):
        return handle(raw if isinstance(raw, list) else [raw], status=lambda: {"n_streams": 0}, reset=reset)

    assert ask(b"status") == ({"ok": True, "n_streams": 0}, False)
    assert ask(b'  {"cmd": "status"}\n') == ({"ok": True, "n_streams": 0}, False)
    assert ask(b"reset rig 1") == ({"ok": True, "reset": ["rig 1"]}, False)  # the rest of the line is the name
    assert ask(b'{"cmd": "reset"}') == ({"ok": True, "reset": [None]}, False) and resets == ["rig 1", None]
    assert ask(b"stop") == ({"ok": True, "stopping": True}, True)
    for raw, says in ((b"{not json", "not valid JSON"), (b"[1, 2]", "unknown command '[1,'"),
                      (b'{"x": 1}', '"cmd" string'), (b'{"cmd": 1}', '"cmd" string'),
                      (b"\xff\xfe", "not UTF-8"), (b"", "unknown command ''"), (b"explode", "unknown command 'explode'"),
                      (b'{"cmd": "reset", "stream": 3}', "stream name"), ([b"status", b"extra"], "one message part")):
        reply, stop = ask(raw)
        assert not reply["ok"] and says in reply["error"] and not stop, (raw, reply)
    assert resets == ["rig 1", None]  # no bad request reached reset
    assert doctest.testmod(control_module).failed == 0


def test_reset_with_a_stream_that_is_not_a_name_is_an_error_reply(ckpt):
    with Service(model=ckpt(), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        reply = control(svc.control_address, "reset", stream=["rig1"])
        assert reply["ok"] is False and "stream name" in reply["error"]
        assert control(svc.control_address, "status")["ok"] is True  # still serving
        assert svc.stats()["rejected_by_reason"].get("internal_error", 0) == 0


def test_every_start_of_the_service_has_its_own_epoch(ckpt):
    """Reliability G: a consumer tells a restart of the service (new epoch) from a gap."""
    ck = ckpt("spectral", 0)
    epochs = set()
    for _ in range(2):
        with rig(ck) as r:
            epochs.add(r.status()["epoch"])
    assert len(epochs) == 2 and all(0 <= e < 2**63 for e in epochs)


def test_follow_motion_set_by_the_service_config():
    """serve --no-follow-motion: the service's imaging engine keeps a still baseline; a
    non-boolean setting is refused before anything loads."""
    with Service(model="imaging-lag0", follow_motion=False, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        assert svc.engine.config.register is False
    with Service(model="imaging-lag0", sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        assert svc.engine.config.register is True
    with pytest.raises(ValueError, match="follow_motion must be"):
        Service(model="imaging-lag0", follow_motion="no", sub=ANY, bind_sub=True, pub=ANY, control="ipc://*")


@pytest.mark.parametrize("pub", ["tcp://127.0.0.1:70000", "tcp://127.0.0.1:0x10", "tcp://127.0.0.1:0"])
def test_a_port_out_of_range_is_refused_not_wrapped(pub):
    from rtdenoise.stream import ServiceConfig

    with pytest.raises(ValueError, match="is not a port"):  # libzmq would bind 70000 as 4464
        ServiceConfig(pub=pub).validate()
    for ok in ("tcp://127.0.0.1:*", "tcp://[::1]:5556", "ipc:///tmp/x", "inproc://a"):
        ServiceConfig(pub=ok).validate()
