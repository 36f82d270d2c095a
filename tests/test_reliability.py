"""Reliability of the live service: fuzzed input against the running service, faults with real processes.

- A hypothesis test interleaves random malformed messages with a good stream sent to a
  running service (in-process, real sockets) and checks that the good stream's outputs
  are bit-for-bit what offline :func:`rtdenoise.denoise.denoise` gives for the same
  chunks, and that ``status`` counts every rejection by its reason.
- Size limits and stream limits, each configurable; a part over ``ZMQ_MAXMSGSIZE``
  costs only the connection that carried it, also when the service's input connects.
- With ``rtdenoise serve`` as a child process on fixed loopback ports: an upstream gap
  and an acquisition restart; the service SIGKILLed and restarted while a publisher and
  a subscriber keep running; a short soak at 1 kHz with every fault of
  ``benchmarks/bench_soak.py`` injected (slow consumer, bursts over capacity, malformed
  messages), its RSS measured from ``/proc``.

The long soak is ``python benchmarks/bench_soak.py`` (10 minutes); its results and the
numbers of these tests are in ``docs/reliability.md``. Set ``RTDENOISE_FUZZ_TALLY=path``
to write the fuzz test's messages-by-kind tally there.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdenoise.denoise import denoise
from rtdenoise.stream import Publisher, Service, Subscriber, admission, control, wire

pytestmark = pytest.mark.timeout(120)

ANY = "tcp://127.0.0.1:*"
W = 152
ROOT = Path(__file__).resolve().parents[1]


def _load_bench_soak():
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "benchmarks" / "bench_soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_soak = _load_bench_soak()


def _frames_of(msgs):
    return np.concatenate([f for _, f in msgs])


def _wait_flowing(pub_send, sub: Subscriber, stream: str, timeout: float = 15.0) -> None:
    """Probe until a frame of ``stream`` comes back (both connections up)."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"no {stream} frame came back"
        pub_send()
        with contextlib.suppress(TimeoutError):
            while True:
                h, _ = sub.recv(timeout=0.05)
                if h["stream"] == stream:
                    return


# ============================================================================ fuzz against the running service

FUZZ_LIMITS = dict(max_header_bytes=4096, max_payload_bytes=1 << 20)
TRIED: collections.Counter = collections.Counter()  # messages tried, by kind (for the report)


class Admitted:
    """What the service must do with one message, by the service's own rules run on a table of
    the streams it holds: the rejection reason, "filtered" (never delivered: outside the
    subscription) or None (accepted). The rules themselves are tested in tests/test_admission.py;
    here the running service must count exactly what they say, message by message."""

    def __init__(self, engine, max_streams=10_000):
        self.limits = admission.Limits(tuple(engine.frame_shape), max_streams, engine.name, **FUZZ_LIMITS)
        self.check_frames = engine.check_frames
        self.streams: dict[str, admission.StreamFormat] = {}

    def __call__(self, parts) -> str | None:
        if not bytes(parts[0]).startswith(b"frames/"):
            return "filtered"
        try:
            _, h, frames = self.limits.decode(parts)
        except wire.WireError as e:
            return e.reason
        verdict = admission.admit(h, frames, self.streams, self.limits, check_frames=self.check_frames)
        if verdict.new:  # made even if these frames are then refused
            self.streams[h["stream"]] = admission.StreamFormat(tuple(h["shape"]), frames.dtype)
        return verdict.reason


_CATALOG = [(k, [bytes(p) for p in parts]) for k, parts, why in bench_soak.malformed_catalog(**FUZZ_LIMITS)
            if why != "disconnect"]  # a part over ZMQ_MAXMSGSIZE drops the connection: tested on its own below
_header_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(),
    st.text(max_size=8), st.binary(max_size=8), st.lists(st.integers(-3, 200), max_size=4),
    st.sampled_from(sorted(wire.DTYPES) + ["<U4", "|O", "f4", "<c8"]),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=2),
)
_header_keys = st.sampled_from(list(wire.REQUIRED_KEYS + wire.OPTIONAL_KEYS + wire.OUTPUT_KEYS) + ["x"])


def _template(draw, stream: str):
    """A valid message of ``stream``: a model-shaped float spectrum or a small uint16 one."""
    if draw(st.booleans()):
        x = np.full((draw(st.integers(1, 3)), W), 100.0, "<f4")
    else:
        x = np.arange(8, dtype="<u2").reshape(2, 4)
    return [bytes(p) for p in wire.encode_frames(stream, x, seq=draw(st.integers(0, 50)), t_ns=0)], x


@st.composite
def bad_message(draw, good: str, next_seq: int):
    """(kind, parts): something malformed or hostile, or a valid message of another stream."""
    kinds = ["catalog", "random_parts", "header_edit", "header_bytes", "other_stream"]
    if next_seq > 0:  # the good stream exists (its first message fixed its shape and dtype)
        kinds += ["good_nan", "good_inf", "good_shape", "good_dtype", "good_payload", "good_extra_key", "good_n",
                  "good_version"]
    kind = draw(st.sampled_from(kinds))
    if kind == "catalog":
        name, parts = draw(st.sampled_from(_CATALOG))
        return name, parts
    if kind == "random_parts":  # any part count and bytes, under a topic the service takes
        parts = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
        parts[0] = b"frames/" + parts[0]
        return kind, parts
    if kind in ("header_edit", "header_bytes", "other_stream"):
        parts, x = _template(draw, "fz" + draw(st.sampled_from(["", "1", "2"])))
        if kind == "header_edit":  # a valid header with random keys set, changed or removed
            h = msgpack.unpackb(parts[1])
            h.update(draw(st.dictionaries(_header_keys, _header_values, max_size=3)))
            for k in draw(st.lists(_header_keys, max_size=2)):
                h.pop(k, None)
            parts[1] = msgpack.packb(h)
            parts[2] = draw(st.one_of(st.just(parts[2]), st.binary(max_size=2 * len(parts[2]))))
        elif kind == "header_bytes":  # bytes of the valid header flipped and cut
            raw = bytearray(parts[1])
            for _ in range(draw(st.integers(1, 4))):
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            parts[1] = bytes(raw[: draw(st.integers(0, len(raw)))])
        elif draw(st.booleans()):  # other_stream: valid, or with a poisoned sample
            bad = x.astype(x.dtype)
            if bad.dtype.kind == "f":
                bad.flat[draw(st.integers(0, bad.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            parts[2] = bad.tobytes()
        return kind, parts
    # Attacks on the good stream itself, at the seq it expects next: all refused, none may disturb it.
    x = np.full((1, W), 100.0, "<f4")
    if kind in ("good_nan", "good_inf"):
        x[0, draw(st.integers(0, W - 1))] = np.nan if kind == "good_nan" else np.inf
        return kind, wire.encode_frames(good, x, seq=next_seq, t_ns=0)
    if kind == "good_shape":
        extra = [2] if draw(st.booleans()) else []
        w = draw(st.integers(1, 200).filter(lambda k: extra or k != W))
        return kind, wire.encode_frames(good, np.ones((1, w, *extra), "<f4"), seq=next_seq, t_ns=0)
    if kind == "good_dtype":
        return kind, wire.encode_frames(good, x.astype(draw(st.sampled_from(["<f8", "<u2", ">f4", "|u1"]))),
                                        seq=next_seq, t_ns=0)
    parts = [bytes(p) for p in wire.encode_frames(good, x, seq=next_seq, t_ns=0)]
    h = msgpack.unpackb(parts[1])
    if kind == "good_payload":  # shape x dtype does not match the payload length
        parts[2] = parts[2][: draw(st.integers(0, len(parts[2]) - 1))] if draw(st.booleans()) else parts[2] + b"\0" * 4
    elif kind == "good_extra_key":
        h[draw(st.sampled_from(["gap", "warm", "evil", "lag"]))] = 0
    elif kind == "good_n":  # negative, zero or huge n
        h["n"] = draw(st.sampled_from([-1, 0, 2, 2**31, 2**62, 2**64 - 1]))
    else:
        h["v"] = draw(st.sampled_from([0, 2, 255, -1, "1", 1.0]))
    parts[1] = msgpack.packb(h)
    return kind, parts


@pytest.fixture(scope="module")
def fuzz_rig(ck):
    """A running service, one PUB feeding it, a Subscriber on its output and its admission rules."""
    # Every example makes a new good stream: room for all of them (max_streams itself is tested below).
    # max_batch=1: each stream stepped alone, so the good stream is offline bit for bit (stepped in one call
    # with the fuzz streams, torch's batched kernels round differently: equal to ~1e-7, tests/test_batch.py).
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_streams=10_000, max_batch=1,
                 **FUZZ_LIMITS) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        model = Admitted(svc.engine, max_streams=svc.config.max_streams)
        k = [0]

        def probe():
            pub.send_multipart(wire.encode_frames("probe", np.full((1, W), 1.0, "<f4"), seq=k[0], t_ns=0))
            k[0] += 1

        _wait_flowing(probe, sub, "probe")
        model.streams["probe"] = admission.StreamFormat((W,), np.dtype("<f4"))
        yield svc, pub, sub, model
        pub.close(linger=0)
        sub.close()
        tally = os.environ.get("RTDENOISE_FUZZ_TALLY")
        if tally:
            Path(tally).write_text(json.dumps({"tried_by_kind": dict(TRIED), "stats": svc.stats()["rejected_by_reason"],
                                               "messages_in": svc.stats()["messages_in"]}, indent=1))


_examples = [0]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data(), chunk=st.integers(1, 4), n_chunks=st.integers(2, 6))
def test_fuzz_running_service_good_stream_bit_exact_and_every_rejection_counted(fuzz_rig, ck, data, chunk, n_chunks):
    svc, pub, sub, model = fuzz_rig
    _examples[0] += 1
    good = f"good-{_examples[0]}-{os.getpid()}"
    x = (np.random.default_rng(_examples[0]).poisson(200.0, (n_chunks * chunk, W))).astype("<f4")
    before = svc.stats()
    expected: collections.Counter = collections.Counter()
    delivered = 0
    attacks = 0
    outs = []
    for i in range(n_chunks):
        seq = i * chunk
        for kind, parts in data.draw(st.lists(bad_message(good, seq), max_size=3), label=f"bad before chunk {i}"):
            why = model(parts)
            TRIED[kind] += 1
            if why != "filtered":
                delivered += 1
            if why not in (None, "filtered"):
                expected[why] += 1
            if kind.startswith("good_"):
                assert why not in (None, "filtered"), (kind, parts)  # (a test bug otherwise)
                attacks += 1
            pub.send_multipart(parts)
        good_parts = wire.encode_frames(good, x[seq:seq + chunk], seq=seq, t_ns=seq)
        assert model(good_parts) is None
        pub.send_multipart(good_parts)
        TRIED["good"] += 1
        delivered += 1
        # Lockstep: each good chunk is stepped on its own, exactly as offline with chunk=`chunk`.
        deadline = time.monotonic() + 10
        while True:
            try:
                h, f = sub.recv(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"no output for {good} seq {seq}; service errors {svc._errors!r}; "
                                     f"status {json.dumps(svc.stats()['streams'].get(good))}") from None
            if h["stream"] == good:
                assert (h["seq"], h["n"], h["gap"]) == (seq, chunk, 0)
                outs.append((h, np.array(f)))
                break
    after = svc.stats()
    assert after["running"]
    # every rejection counted, by its reason; every delivered message counted once
    got = collections.Counter(after["rejected_by_reason"])
    got.subtract(before["rejected_by_reason"])
    assert +got == expected
    assert after["messages_in"] - before["messages_in"] == delivered
    # the good stream: bit for bit what offline gives, nothing lost, nothing flagged
    np.testing.assert_array_equal(_frames_of(outs), denoise(x, model=ck, chunk=chunk))
    g = after["streams"][good]
    assert (g["frames_in"], g["frames_out"], g["gaps"], g["restarts"], g["dropped"]) == (len(x), len(x), 0, 0, 0)
    assert g["rejected"] == sum(v for k, v in g["rejected_by_reason"].items()) and g["rejected"] <= attacks


# ============================================================================ limits, oversized parts, big messages


def test_what_could_not_be_sent_is_refused_on_arrival_and_no_seq_shifts(ck):
    """Reliability A and D: a meta of float32 values grows past the wire's header limit when
    the output header is re-encoded, and |u1 frames grow 4x as float32 output: both used to
    be stepped and then fail to send, shifting every later output's seq. Now both are
    refused on arrival with a counted reason, and the outputs after them carry their own
    input's seq, the loss flagged in ``gap``."""
    x = np.full((2, W), 100, "|u1")
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*") as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("w", x[:1], seq=0, t_ns=0)), sub, "w")
            pub.send_multipart(wire.encode_frames("s", x, seq=0, t_ns=0))
            h = msgpack.unpackb(bytes(wire.encode_frames("s", x, seq=2, t_ns=0)[1]))
            meta = {"v": [np.float32(0.5)] * 12_000}  # 60 kB as float32, 108 kB as the float64 it comes back as
            packed = msgpack.packb({**h, "meta": meta}, use_single_float=True, default=float)
            assert len(packed) < wire.MAX_HEADER_BYTES
            pub.send_multipart([b"frames/s", packed, x.tobytes()])
            big = np.full((wire.MAX_PAYLOAD_BYTES // (4 * W) + 1, W), 7, "|u1")  # fits as u1, not as float32
            pub.send_multipart(wire.encode_frames("s", big, seq=4, t_ns=0))
            pub.send_multipart(wire.encode_frames("s", x, seq=4 + len(big), t_ns=0))
            got = []
            while len(got) < 2:
                h2, _ = sub.recv(timeout=10)
                if h2["stream"] == "s":
                    got.append(h2)
            st_ = control(svc.control_address, "status")["streams"]["s"]
        finally:
            pub.close(linger=0)
            sub.close()
    assert [(g["seq"], g["gap"]) for g in got] == [(0, 0), (4 + len(big), 2 + len(big))]
    assert st_["rejected_by_reason"] == {"output_too_large": 2} and st_["frames_out"] == 4


def test_limits_are_configurable_and_rejections_say_what_broke(ck, caplog):
    caplog.set_level(logging.WARNING, logger="rtdenoise.stream.service")
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_streams=2,
                 max_header_bytes=512, max_payload_bytes=8 * W * 4) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            x = np.full((1, W), 100.0, "<f4")
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("a", x, seq=0, t_ns=0)), sub, "a")
            h = msgpack.unpackb(bytes(wire.encode_frames("b", x, seq=0, t_ns=0)[1]))
            pub.send_multipart([b"frames/b", msgpack.packb({**h, "meta": {"pad": "x" * 600}}), x.tobytes()])
            pub.send_multipart([b"frames/b", msgpack.packb({**h, "n": 10**6}), x.tobytes()])  # announced too big
            pub.send_multipart(wire.encode_frames("b", x, seq=0, t_ns=0))  # the second stream: fine
            pub.send_multipart(wire.encode_frames("c", x, seq=0, t_ns=0))  # a third: over max_streams
            pub.send_multipart(wire.encode_frames("a", x, seq=1, t_ns=0))
            deadline = time.monotonic() + 10
            while True:
                h2, _ = sub.recv(timeout=10)
                if h2["stream"] == "a" and h2["seq"] == 1:
                    break
                assert time.monotonic() < deadline
            st_ = control(svc.control_address, "status")
        finally:
            pub.close(linger=0)
            sub.close()
    assert st_["rejected_by_reason"] == {"too_large": 2, "too_many_streams": 1}
    assert (st_["max_streams"], st_["max_header_bytes"], st_["max_payload_bytes"]) == (2, 512, 8 * W * 4)
    assert sorted(st_["streams"]) == ["a", "b"]
    text = caplog.text
    assert "header is 6" in text and "limit 512" in text  # what was received and the limit
    assert "limit 4864" in text and "max_streams=2" in text
    # (a payload over max_payload_bytes is also over ZMQ_MAXMSGSIZE: see the next test)


def test_oversized_part_costs_only_its_own_connection(ck, caplog):
    """A part over ZMQ_MAXMSGSIZE: libzmq drops that connection; other connections are untouched,
    the drop is counted, and the offender's next frames arrive with the gap flagged."""
    caplog.set_level(logging.INFO, logger="rtdenoise.stream.service")
    lim = dict(max_header_bytes=1024, max_payload_bytes=64 * W * 4)
    x = np.random.default_rng(1).poisson(300.0, (40, W)).astype("<f4")
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", **lim) as svc:
        sub = Subscriber(svc.pub_address)
        good = Publisher(svc.sub_address, stream="good")
        bad = Publisher(svc.sub_address, stream="bad")
        try:
            _wait_flowing(lambda: good.send(x[0], seq=0), sub, "good")
            _wait_flowing(lambda: bad.send(x[0], seq=0), sub, "bad")
            before = svc.stats()["connections"]["sub"].get("disconnected", 0)
            bad.send(np.ones((65, W), "<f4"), seq=1)  # 65 frames: one part over the limit
            got = []
            for i in range(40):
                good.send(x[i:i + 1], seq=100 + i)
                time.sleep(0.002)
            deadline = time.monotonic() + 10
            while sum(len(f) for h, f in got if h["stream"] == "good" and h["seq"] >= 100) < 40:
                assert time.monotonic() < deadline
                h, f = sub.recv(timeout=10)
                got.append((h, np.array(f)))
            goods = [(h, f) for h, f in got if h["stream"] == "good" and h["seq"] >= 100]
            assert goods[0][0]["gap"] == 100 - 1 and all(h["gap"] == 0 for h, _ in goods[1:])  # the probe's jump only
            np.testing.assert_allclose(_frames_of(goods), denoise(x, model=ck), rtol=1e-5, atol=1e-3)
            # the offender reconnects by itself (its PUB connects); its next frames flow, seq shows the loss
            deadline = time.monotonic() + 10
            seq = 66
            while True:
                assert time.monotonic() < deadline, "the publisher never got back in"
                bad.send(x[0], seq=seq)
                seq += 1
                with contextlib.suppress(TimeoutError):
                    h, _ = sub.recv(timeout=0.05)
                    if h["stream"] == "bad":
                        break
            assert h["gap"] == h["seq"] - 1  # frames 1.. never arrived: flagged
            c = svc.stats()["connections"]["sub"]
        finally:
            for s in (good, bad, sub):
                s.close()
    assert c["disconnected"] == before + 1
    assert "ZMQ_MAXMSGSIZE" in caplog.text and str(64 * W * 4) in caplog.text


def test_connecting_input_comes_back_after_an_oversized_part(ck):
    """Regression: libzmq never retries a *connecting* socket it closed for a protocol error;
    the service connects again (status connections.sub.reconnect) instead of going deaf."""
    acq = zmq.Context.instance().socket(zmq.PUB)  # the acquisition binds, the service connects
    acq.bind(ANY)
    addr = acq.getsockopt(zmq.LAST_ENDPOINT).decode()
    x = np.full((1, W), 100.0, "<f4")
    try:
        with Service(model=ck, sub=addr, pub=ANY, control="ipc://*", max_header_bytes=1024, max_payload_bytes=4096) as svc:
            with Subscriber(svc.pub_address, streams="acq") as sub:
                seq = [0]

                def send():
                    acq.send_multipart(wire.encode_frames("acq", x, seq=seq[0], t_ns=0))
                    seq[0] += 1

                _wait_flowing(send, sub, "acq")
                acq.send_multipart(wire.encode_frames("acq", np.ones((10, W), "<f4"), seq=seq[0], t_ns=0))
                seq[0] += 10
                _wait_flowing(send, sub, "acq")  # before the fix: never again
                c = svc.stats()["connections"]["sub"]
        assert c["disconnected"] >= 1 and c["reconnect"] >= 1
    finally:
        acq.close(linger=0)


def test_connecting_input_leaves_an_ordinary_restart_to_libzmq(ck):
    """Regression: after an acquisition that binds closes and comes back, libzmq reconnects
    the input by itself; the service must not add a connection of its own beside it (two
    pipes to one address made libzmq abort the whole process: ``!_more (fq.cpp:80)``)."""
    probe = zmq.Context.instance().socket(zmq.PUB)
    probe.bind(ANY)
    addr = probe.getsockopt(zmq.LAST_ENDPOINT).decode()
    probe.close(linger=0)
    x = np.full((1, W), 100.0, "<f4")
    with Service(model=ck, sub=addr, pub=ANY, control="ipc://*") as svc:
        with Subscriber(svc.pub_address, streams="acq") as sub:
            seq = 0
            for _ in range(3):  # the acquisition starts, sends, stops
                acq = zmq.Context.instance().socket(zmq.PUB)
                acq.bind(addr)

                def send():
                    nonlocal seq
                    acq.send_multipart(wire.encode_frames("acq", x, seq=seq, t_ns=0))
                    seq += 1

                _wait_flowing(send, sub, "acq")
                acq.close(linger=0)
                time.sleep(0.1)
            time.sleep(1.0)  # longer than the service waits for libzmq's "retried"
            c = svc.stats()["connections"]["sub"]
    assert c["disconnected"] >= 3 and c.get("reconnect", 0) == 0


class _StepRecorder:
    def __init__(self, engine):
        self._e, self.sizes = engine, []

    def __getattr__(self, name):
        return getattr(self._e, name)

    def step(self, x, state, **kw):
        self.sizes.append(len(x))
        return self._e.step(x, state, **kw)


def test_a_huge_message_is_stepped_in_bounded_pieces(ck):
    """Regression: one valid 3000-frame message (or a backlog) was stepped as one chunk, its memory
    unbounded (a 256 MiB payload of frames could exhaust the host); now pieces of at most 1024,
    each published as it is done, the seq of each output its own first frame's."""
    from rtdenoise.backends import load_engine

    eng = _StepRecorder(load_engine(ck))
    x = np.random.default_rng(2).poisson(300.0, (3000, W)).astype("<f4")
    with Service(engine=eng, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_queue=10) as svc:
        with Subscriber(svc.pub_address, streams="big") as sub, Publisher(svc.sub_address, stream="big") as pub:
            _wait_flowing(lambda: pub.send(x[:1], seq=0), sub, "big")
            eng.sizes.clear()
            pub.send(x, seq=10_000)
            got = []
            while sum(len(f) for _, f in got) < 3000:
                h, f = sub.recv(timeout=20)
                if h["seq"] >= 10_000:
                    got.append((h, np.array(f)))
    assert max(eng.sizes) <= 1024 and sum(eng.sizes) == 3000
    assert [h["seq"] for h, _ in got] == list(10_000 + np.cumsum([0] + [len(f) for _, f in got[:-1]]))
    np.testing.assert_allclose(np.concatenate([f for _, f in got]), denoise(x, model=ck), rtol=1e-5, atol=1e-3)


# ============================================================================ real processes


@pytest.fixture(scope="module")
def served(ck, tmp_path_factory):
    """``rtdenoise serve`` as a child process on fixed loopback ports, max_queue 200."""
    path = tmp_path_factory.mktemp("serve") / "tiny.pt"
    ck.save(path)
    proc = bench_soak.ServeProcess(path, args=("--max-queue", "200")).start()
    yield proc
    proc.stop()


def _collect(sub, stream, until, timeout=15.0):
    """Messages of ``stream`` until ``until(messages)``."""
    got, deadline = [], time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        assert left > 0, f"{stream}: {sum(len(f) for _, f in got)} frames so far"
        with contextlib.suppress(TimeoutError):
            h, f = sub.recv(timeout=min(left, 0.2))
            if h["stream"] == stream:
                got.append((h, np.array(f)))
    return got


def _n(msgs):
    return sum(len(f) for _, f in msgs)


def test_process_upstream_gap_and_acquisition_restart(served, ck):
    """Frames lost upstream: flagged in the header, counted, context reset. Acquisition restarted
    (seq back to 0): counted, a fresh context (no stale frames), seq going back tells the consumer."""
    rng = np.random.default_rng(3)
    x, y = rng.poisson(300.0, (80, W)).astype("<f4"), rng.poisson(900.0, (30, W)).astype("<f4")
    a = served.addresses
    pub = zmq.Context.instance().socket(zmq.PUB)  # one connection for the probe and the stream
    pub.connect(a["sub"])

    def send(stream, frame, seq):
        pub.send_multipart(wire.encode_frames(stream, frame[None], seq=seq, t_ns=0))

    with Subscriber(a["pub"], streams=["gr", "gr.probe"]) as sub:
        k = iter(range(10**6))
        _wait_flowing(lambda: send("gr.probe", x[0], next(k)), sub, "gr.probe")
        for i in range(40):
            send("gr", x[i], 1000 + i)
        for i in range(50, 80):  # 1040..1049 lost upstream
            send("gr", x[i], 1000 + i)
        for i in range(30):  # the acquisition restarts
            send("gr", y[i], i)
        msgs = _collect(sub, "gr", lambda m: _n(m) >= 100)
        st1 = served.status()["streams"]["gr"]
    pub.close(linger=0)
    seg1 = [(h, f) for h, f in msgs if 1000 <= h["seq"] < 1040]
    seg2 = [(h, f) for h, f in msgs if h["seq"] >= 1050]
    seg3 = [(h, f) for h, f in msgs if h["seq"] < 30]
    assert (_n(seg1), _n(seg2), _n(seg3)) == (40, 30, 30)
    assert seg2[0][0]["seq"] == 1050 and seg2[0][0]["gap"] == 10 and not seg2[0][0]["warm"]
    assert seg3[0][0]["seq"] == 0 and seg3[0][0]["gap"] == 0 and not seg3[0][0]["warm"]  # seq went back: restart
    assert all(h["gap"] == 0 for h, _ in seg2[1:] + seg3[1:])
    tol = dict(rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(_frames_of(seg2), denoise(x[50:], model=ck), **tol)  # context reset at the gap
    np.testing.assert_allclose(_frames_of(seg3), denoise(y, model=ck), **tol)  # nothing of x leaks into y
    np.testing.assert_allclose(_frames_of(seg1), denoise(x[:40], model=ck), **tol)
    d = {k: st1[k] for k in ("gaps", "frames_missing", "restarts", "frames_in", "frames_out", "rejected")}
    assert d == {"gaps": 1, "frames_missing": 10, "restarts": 1, "frames_in": 100, "frames_out": 100, "rejected": 0}


def test_process_killed_and_restarted_while_publisher_and_subscriber_keep_running(served, ck):
    """SIGKILL the service mid-stream and start it again on the same ports: the publisher
    never notices, the subscriber reconnects by itself, the stream warms up again."""
    x = np.random.default_rng(4).poisson(500.0, (4000, W)).astype("<f4")
    a = served.addresses
    stop, errors, sent = threading.Event(), [], [0]

    def publish():  # 200 Hz, the whole time, one Publisher object
        try:
            with Publisher(a["sub"], stream="live") as pub:
                t0 = time.monotonic()
                for i in range(len(x)):
                    if stop.is_set():
                        return
                    time.sleep(max(0.0, t0 + i / 200.0 - time.monotonic()))
                    pub.send(x[i], seq=i)
                    sent[0] = i + 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=publish, daemon=True)
    with Subscriber(a["pub"], streams="live") as sub:
        th.start()
        before = _collect(sub, "live", lambda m: _n(m) >= 40)
        rf = served.status()["receptive_field"]
        old_pid = served.pid
        served.kill()
        with contextlib.suppress(TimeoutError):  # whatever was in flight
            while True:
                sub.recv(timeout=0.3)
        sent_at_kill = sent[0]
        time.sleep(0.5)
        served.start()  # same ports
        after = _collect(sub, "live", lambda m: _n(m) >= rf + 40, timeout=30)
        stop.set()
        th.join(10)
        _quiet(sub, "live", after)  # the rest, until nothing more comes
        st = served.status()["streams"]["live"]
    assert not errors and served.pid != old_pid
    last_before = before[-1][0]["seq"] + before[-1][0]["n"] - 1
    s1 = after[0][0]["seq"]
    # No stale frames: nothing sent while the service was down arrives late (the Publisher drops
    # them: ZMQ_IMMEDIATE); the consumer sees what it missed from seq: s1 - last_before - 1 frames.
    assert s1 > sent_at_kill > last_before
    assert after[0][0]["gap"] == 0  # the new process knows nothing of before
    seqs = [h["seq"] + j for h, f in after for j in range(len(f))]
    assert seqs == list(range(s1, sent[0]))  # from its first output on, every frame, in order
    # The new process started a fresh context at the first frame it got, s0 (<= s1: its first
    # outputs may have left before the subscriber was connected again).
    assert st["gaps"] == 0 and st["frames_out"] == st["frames_in"]
    s0 = sent[0] - st["frames_in"]
    assert s0 <= s1
    for h, _ in after:  # warms up again: warm once the frame had rf frames of context
        assert h["warm"] == (h["seq"] - s0 + 1 >= rf), (h["seq"], s0, rf)
    ref = denoise(x[s0:sent[0]], model=ck)[s1 - s0:]
    np.testing.assert_allclose(_frames_of(after), ref, rtol=1e-5, atol=1e-3)


def _quiet(sub, stream, got, settle=0.5):
    """Append what arrives of ``stream`` until nothing more does for ``settle`` s."""
    try:
        while True:
            h, f = sub.recv(timeout=settle)
            if h["stream"] == stream:
                got.append((h, np.array(f)))
    except TimeoutError:
        return True


def test_process_soak_at_1khz_with_faults_memory_flat_and_every_loss_accounted(served):
    """15 s of the soak benchmark against the service process (the 10-minute run is benchmarks/bench_soak.py)."""
    r = bench_soak.soak(served.addresses, served.pid, seconds=15.0, rate=1000.0, warmup_s=5.0, gap_every_s=3.0,
                        restart_every_s=7.0, burst_every_s=4.0)
    report = os.environ.get("RTDENOISE_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps(r, indent=1))
    assert r["checks"] == {k: True for k in r["checks"]}, json.dumps(r["faults"], indent=1)
    f = r["faults"]
    assert f["upstream_gap"]["injected"] >= 3 and f["acquisition_restart"]["injected"] >= 1
    assert f["slow_consumer"]["frames_lost"] > 0 and f["burst_over_capacity"]["frames_lost"] > 0
    assert r["memory"]["growth_pct"] < 5.0, r["memory"]


def test_error_logs_are_rate_limited_and_carry_their_count_and_traceback(caplog):
    """Reliability H: a bug hit on every message used to log a full traceback each time."""
    from rtdenoise.stream.stats import Stats

    caplog.set_level(logging.WARNING, logger="rtdenoise.stream.service")
    stats = Stats()
    for _ in range(2500):
        try:
            raise KeyError("the same bug")
        except KeyError as e:
            with stats.lock:
                stats.reject("internal_error", f"{type(e).__name__}: {e}", exc_info=True)
    logged = [r for r in caplog.records if "internal_error" in r.getMessage()]
    assert stats.rejected["internal_error"] == 2500
    assert [r.getMessage().split("#")[1].split(")")[0] for r in logged] == [str(k) for k in (*range(1, 11), 1000, 2000)]
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in logged)


def test_idle_streams_are_flushed_and_forgotten_so_junk_names_cannot_lock_out_new_streams(tiny_checkpoint):
    """Reliability E: stream names filled the table for good (64 junk names locked out every
    new stream until a restart). Idle streams now owe nothing and leave the table."""
    ck = tiny_checkpoint("subspace", 2)
    x = np.full((5, W), 100.0, "<f4")
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_streams=3, stream_idle_s=0.6) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("a", x, seq=0, t_ns=0)), sub, "a")
            for name in ("b", "c", "d"):  # "d" is one too many
                pub.send_multipart(wire.encode_frames(name, x, seq=0, t_ns=0))
            time.sleep(0.3)
            full = svc.stats()
            got = collections.Counter()
            deadline = time.monotonic() + 10
            while svc.stats()["streams_expired"] < 3:  # every stream idle: flushed, then forgotten
                assert time.monotonic() < deadline, svc.stats()
                with contextlib.suppress(TimeoutError):
                    h, f = sub.recv(timeout=0.2)
                    got[h["stream"]] += len(f)
            got.update(h["stream"] for h, f in _drain_all(sub) for _ in range(len(f)))
            pub.send_multipart(wire.encode_frames("d", x, seq=0, t_ns=0))  # a new stream gets in now
            deadline = time.monotonic() + 10
            while "d" not in svc.stats()["streams"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            after = svc.stats()
        finally:
            pub.close(linger=0)
            sub.close()
    assert full["rejected_by_reason"] == {"too_many_streams": 1} and full["streams"]["b"]["in_flight"] == 2
    assert got["b"] == got["c"] == 5  # what the lag-2 model owed was flushed before the streams left
    assert after["streams_expired"] == 3 and set(after["streams"]) == {"d"} and after["stream_idle_s"] == 0.6
    assert after["batch"]["members"] <= 1  # the forgotten streams' slots were freed: at most "d" holds one


@pytest.mark.parametrize("spin", [False, True])
def test_stopping_publishes_what_each_stream_still_owes(tiny_checkpoint, spin):
    """Acceptance review: stopping the service (stop command, SIGTERM) dropped the last ``lag``
    frames of every stream of a lookahead model; idle expiry flushed them, a stop did not."""
    ck = tiny_checkpoint("subspace", 2)
    x = np.full((10, W), 100.0, "<f4")
    svc = Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", spin=spin).start()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.connect(svc.sub_address)
    sub = Subscriber(svc.pub_address)
    try:
        _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("probe", x[:1], seq=0, t_ns=0)), sub, "probe")
        pub.send_multipart(wire.encode_frames("a", x, seq=0, t_ns=0, fs=5.0))
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 8:  # what a lag-2 model gives for 10 frames while it runs
            assert time.monotonic() < deadline, got
            with contextlib.suppress(TimeoutError):
                h, f = sub.recv(timeout=0.2)
                if h["stream"] == "a":
                    got += range(h["seq"], h["seq"] + len(f))
        final = svc.stop()
        got += [s for h, f in _drain_all(sub) if h["stream"] == "a" for s in range(h["seq"], h["seq"] + len(f))]
    finally:
        pub.close(linger=0)
        sub.close()
        svc.stop()
    assert got == list(range(10))  # the two owed frames left before the output closed
    assert final["streams"]["a"]["frames_out"] == 10 and final["rejected"] == 0


def test_frames_still_queued_when_the_stop_gives_up_are_counted_as_stopped(tiny_checkpoint, monkeypatch):
    """What the engine could not step before the stop's deadline is counted (reason ``stopped``),
    and what it did step is still flushed."""
    from rtdenoise.stream import service as service_mod

    monkeypatch.setattr(service_mod, "_FINISH_S", 0.0)  # the deadline has passed when the stop begins
    x = np.full((5, W), 100.0, "<f4")
    svc = Service(model=tiny_checkpoint("subspace", 2), sub=ANY, bind_sub=True, pub=ANY, control="ipc://*").start()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.connect(svc.sub_address)
    sub = Subscriber(svc.pub_address)
    try:
        _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("probe", x[:1], seq=0, t_ns=0)), sub, "probe")
        _drain_all(sub)  # every probe stepped: the engine is idle
        step = svc.engine.step
        monkeypatch.setattr(svc.engine, "step", lambda *a, **k: (time.sleep(0.5), step(*a, **k))[1])  # a slow card
        pub.send_multipart(wire.encode_frames("a", x, seq=0, t_ns=0))  # stepped (0.5 s) ...
        time.sleep(0.1)
        pub.send_multipart(wire.encode_frames("a", x, seq=5, t_ns=0))  # ... while this one waits
        deadline = time.monotonic() + 5
        while svc.stats()["streams"].get("a", {}).get("frames_in", 0) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        final = svc.stop()
        got = [s for h, f in _drain_all(sub) if h["stream"] == "a" for s in range(h["seq"], h["seq"] + len(f))]
    finally:
        pub.close(linger=0)
        sub.close()
        svc.stop()
    assert final["rejected_by_reason"] == {"stopped": 1}
    assert final["streams"]["a"]["discarded"] == 5 and final["streams"]["a"]["frames_out"] == 5
    assert got == list(range(5))  # the first message whole: three stepped, the two owed flushed


def test_each_streams_queue_is_bounded_in_bytes_too(ck):
    """Sized for images: max_queue_bytes bounds a stream's queue whatever its frames weigh."""
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_queue=1000,
                 max_queue_bytes=20 * W * 4) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            x = np.full((1, W), 100.0, "<f4")
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("f4", x, seq=0, t_ns=0)), sub, "f4")
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("u2", x.astype("<u2"), seq=0, t_ns=0)),
                          sub, "u2")
            st = svc.stats()
        finally:
            pub.close(linger=0)
            sub.close()
    assert st["max_queue_bytes"] == 20 * W * 4
    assert (st["streams"]["f4"]["queue_limit"], st["streams"]["u2"]["queue_limit"]) == (20, 40)


def test_refused_messages_do_not_keep_a_stream_alive(ck):
    """A sender whose every message is refused (here NaN frames) must not pin its stream's slot."""
    x = np.full((1, W), 100.0, "<f4")
    bad = x.copy()
    bad[0, 3] = np.nan
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", stream_idle_s=0.6) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("a", x, seq=0, t_ns=0)), sub, "a")
            deadline = time.monotonic() + 10
            while svc.stats()["streams_expired"] < 1:  # refused the whole time, and still forgotten
                assert time.monotonic() < deadline, svc.stats()
                pub.send_multipart(wire.encode_frames("a", bad, seq=1, t_ns=0))
                time.sleep(0.1)
            assert svc.stats()["rejected_by_reason"]["bad_frames"] >= 5
        finally:
            pub.close(linger=0)
            sub.close()


def _drain_all(sub, seconds=0.3):
    out = []
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(sub.recv(timeout=seconds))
    return out


def test_a_huge_message_takes_turns_with_the_other_streams(ck):
    """Reliability C: one legal 20,000-frame message used to stall every other stream until
    the engine had worked it all off; it is now worked in engine-step pieces, each stream
    taking a turn between them, and its outputs are those of one pass."""
    big = np.random.default_rng(0).integers(80, 120, (20_000, W)).astype("|u1")
    x = np.full((1, W), 100, "|u1")
    with Service(model=ck, sub=ANY, bind_sub=True, pub=ANY, control="ipc://*", max_queue=50_000) as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            _wait_flowing(lambda: pub.send_multipart(wire.encode_frames("small", x, seq=0, t_ns=0)), sub, "small")
            _drain_all(sub, 0.2)
            pub.send_multipart(wire.encode_frames("big", big, seq=0, t_ns=0))
            time.sleep(0.05)
            pub.send_multipart(wire.encode_frames("small", x, seq=10_000, t_ns=0))
            order, frames = [], []
            while sum(len(f) for f in frames) < len(big):
                h, f = sub.recv(timeout=30)
                order.append(h["stream"])
                if h["stream"] == "big":
                    frames.append(np.array(f))
        finally:
            pub.close(linger=0)
            sub.close()
    assert "small" in order and order.index("small") < len(order) - 1  # served before the big one was done
    assert order.count("big") > 10  # worked in pieces
    np.testing.assert_allclose(np.concatenate(frames), denoise(big, model=ck), rtol=1e-4, atol=1e-3)
