"""Admission without sockets: the service's per-stream rules on decoded messages.

:func:`rtdenoise.stream.admission.admit` is what the service's receive thread runs on
every decoded message; ``tests/test_reliability.py`` checks that the running service
counts exactly what it says. Here: each rule, the order they are checked in, and that
the frames are validated once, by the engine's own check.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from rtdenoise.stream import admission, wire
from rtdenoise.stream.admission import Limits, StreamFormat, admit

W = 152


@pytest.fixture(scope="module")
def engine(ck):
    from rtdenoise.backends import load_engine

    return load_engine(ck)


@pytest.fixture
def limits(engine):
    return Limits(tuple(engine.frame_shape), 3, engine.name)


def _msg(stream="s", frames=None, seq=0):
    """(header, frames) as wire.decode gives them."""
    x = np.full((1, W), 100.0, "<f4") if frames is None else frames
    _, h, f = wire.decode(wire.encode_frames(stream, x, seq=seq, t_ns=0), kind=wire.FRAMES)
    return h, f


def _nan(value=np.nan, n=2):
    x = np.full((n, W), 100.0, "<f4")
    x[n - 1, 7] = value
    return x


def _run(messages, limits, check_frames):
    """Admit messages in order, keeping the table as the service does; the reasons, in order."""
    streams, reasons = {}, []
    for h, f in messages:
        v = admit(h, f, streams, limits, check_frames=check_frames)
        if v.new:
            streams[h["stream"]] = StreamFormat(tuple(h["shape"]), f.dtype)
        assert v.accepted == (v.reason is None) and (v.message == "") == v.accepted
        reasons.append(v.reason)
    return reasons, streams


def test_a_new_stream_is_admitted_and_its_first_message_fixes_shape_and_dtype(limits, engine):
    h, f = _msg("a")
    v = admit(h, f, {}, limits, check_frames=engine.check_frames)
    assert (v.reason, v.new, v.accepted) == (None, True, True)
    known = {"a": StreamFormat((W,), np.dtype("<f4"))}
    v = admit(*_msg("a", seq=1), known, limits, check_frames=engine.check_frames)
    assert (v.reason, v.new) == (None, False)
    # another dtype from the first message on is another stream's business
    v = admit(*_msg("b", np.zeros((3, W), "<u2")), known, limits, check_frames=engine.check_frames)
    assert (v.reason, v.new) == (None, True)


def test_each_rule_with_its_reason_and_what_the_message_says(limits, engine):
    known = {"a": StreamFormat((W,), np.dtype("<f4"))}
    cases = [
        (_msg("new", np.ones((1, 150), "<f4")), {}, "frame_shape", ["(150,)", f"({W},)", repr(engine.name)]),
        (_msg("new", np.ones((1, 4, 38), "<f4")), {}, "frame_shape", ["(4, 38)"]),
        (_msg("a", np.ones((1, 150), "<f4")), known, "shape_change", ["(150,)", f"started with ({W},)"]),
        (_msg("a", np.ones((1, W), "<f8")), known, "dtype_change", ["'<f8'", "started with '<f4'"]),
        (_msg("a", np.ones((1, W), ">f4")), known, "dtype_change", ["'>f4'"]),
        (_msg("a", _nan(np.nan), seq=5), known, "bad_frames", ["NaN/inf samples in seq 5..6; dropped"]),
        (_msg("a", _nan(np.inf)), known, "bad_frames", ["NaN/inf"]),
        (_msg("a", _nan(-np.inf)), known, "bad_frames", ["NaN/inf"]),
    ]
    for (h, f), streams, reason, says in cases:
        v = admit(h, f, streams, limits, check_frames=engine.check_frames)
        assert v.reason == reason, (h, v)
        assert v.new is False
        for text in says:
            assert text in v.message, (text, v.message)
    full = {k: StreamFormat((W,), np.dtype("<f4")) for k in "xyz"}  # max_streams = 3
    v = admit(*_msg("new"), full, limits, check_frames=engine.check_frames)
    assert (v.reason, v.new) == ("too_many_streams", False) and "max_streams=3" in v.message
    assert admit(*_msg("x"), full, limits, check_frames=engine.check_frames).accepted  # known streams go on


def test_rules_are_checked_in_order_the_first_broken_one_counts(limits, engine):
    full = {k: StreamFormat((W,), np.dtype("<f4")) for k in "xyz"}
    known = {"a": StreamFormat((W,), np.dtype("<f4"))}
    bad_shape_nan = np.full((1, 150), np.nan, "<f4")
    cases = [
        (_msg("new", bad_shape_nan), {}, "frame_shape"),  # shape before NaN
        (_msg("new", np.ones((1, 150), "<f4")), full, "frame_shape"),  # shape before the stream limit
        (_msg("new", _nan()), full, "too_many_streams"),  # the stream limit before NaN
        (_msg("a", bad_shape_nan), known, "shape_change"),
        (_msg("a", np.ones((1, 150), "<f8")), known, "shape_change"),  # shape before dtype
        (_msg("a", _nan().astype("<f8")), known, "dtype_change"),  # dtype before NaN
    ]
    for (h, f), streams, reason in cases:
        assert admit(h, f, streams, limits, check_frames=engine.check_frames).reason == reason, (h, reason)


def test_a_new_stream_whose_first_frames_are_refused_still_gets_its_place(limits, engine):
    """Its bad_frames is counted against it; its next good message is not a new stream."""
    v = admit(*_msg("a", _nan()), {}, limits, check_frames=engine.check_frames)
    assert (v.reason, v.new) == ("bad_frames", True)
    reasons, streams = _run([_msg("a", _nan()), _msg("a", np.ones((1, W), "<f8")), _msg("a", np.ones((1, W), "<f4"))],
                            limits, engine.check_frames)
    assert reasons == ["bad_frames", "dtype_change", None] and list(streams) == ["a"]


def test_integers_are_never_bad_frames(limits, engine):
    for dtype in ("<u2", ">i4", "|u1", "<u4"):
        x = np.full((2, W), np.iinfo(dtype).max, dtype)
        assert admit(*_msg(f"s{dtype[1:]}", x), {}, limits, check_frames=engine.check_frames).accepted


@pytest.mark.parametrize("check", ["engine", "default"])
@pytest.mark.parametrize("dtype, value", [("<f4", 3e38), ("<f8", 1e300), ("<f8", -5e9), (">f4", 1e10)])
def test_finite_values_beyond_any_detector_count_are_refused(limits, engine, check, dtype, value):
    """Reliability B: one such frame used to drive a stream's state to inf for good."""
    x = np.full((3, W), 100, dtype)
    x[1, 5] = value
    kw = {"check_frames": engine.check_frames} if check == "engine" else {}
    v = admit(*_msg("hot", x, seq=4), {}, limits, **kw)
    assert v.reason == "value_range" and v.new and "seq 4..6" in v.message
    x[1, 5] = 2**32 - 1  # a 32-bit detector's full range is fine
    assert admit(*_msg("hot", x), {}, limits, **kw).accepted


def test_frame_times_beyond_uint64_are_refused(limits, engine):
    """Reliability A: fs=1e-300 or t_ns near 2**64 made the frame times overflow after the
    engine had used the frames."""
    x = np.full((2, W), 100.0, "<f4")
    for t_ns, fs in ((0, 1e-300), (2**64 - 10, 1.0)):
        _, h, f = wire.decode(wire.encode_frames("t", x, seq=0, t_ns=t_ns, fs=fs), kind=wire.FRAMES)
        v = admit(h, f, {}, limits, check_frames=engine.check_frames)
        assert v.reason == "time_range" and "fs" in v.message
    _, h, f = wire.decode(wire.encode_frames("t", x[:1], seq=0, t_ns=0, fs=1e-300), kind=wire.FRAMES)
    assert admit(h, f, {}, limits).accepted  # one frame: its time is t_ns itself


def test_a_sequence_of_messages_as_the_service_sees_them(limits, engine):
    good = np.full((1, W), 100.0, "<f4")
    messages = [
        _msg("a", good), _msg("a", _nan()), _msg("b", np.ones((1, 10), "<f4")), _msg("b", good.astype("<u2")),
        _msg("b", good), _msg("c", good), _msg("d", good), _msg("a", good.astype("<f8")), _msg("d", _nan()),
        _msg("c", good, seq=1),
    ]
    reasons, streams = _run(messages, limits, engine.check_frames)
    assert reasons == [None, "bad_frames", "frame_shape", None, "dtype_change", None, "too_many_streams",
                       "dtype_change", "too_many_streams", None]
    assert {k: v.dtype.str for k, v in streams.items()} == {"a": "<f4", "b": "<u2", "c": "<f4"}


def test_the_frames_are_checked_once_by_the_engine_and_only_after_the_stream_rules(limits, engine):
    calls = []

    def check(frames):
        calls.append(frames.shape)
        return engine.check_frames(frames)

    known = {"a": StreamFormat((W,), np.dtype("<f4"))}
    for h, f in (_msg("a", np.ones((3, W), "<f4")), _msg("a", _nan()), _msg("new")):
        admit(h, f, known, limits, check_frames=check)
    assert calls == [(3, W), (2, W), (1, W)]  # once per message
    calls.clear()
    for h, f in (_msg("a", np.ones((1, 150), "<f4")), _msg("a", np.ones((1, W), "<f8")),
                 _msg("new", np.ones((1, 150), "<f4"))):
        admit(h, f, known, limits, check_frames=check)
    assert calls == []  # refused by the stream rules first: never looked at


def test_the_engine_refusing_for_another_reason_is_bad_frames_too(limits):
    def refuse(frames):
        raise TypeError("not for this engine")

    v = admit(*_msg("a", np.ones((2, W), "<u2"), seq=3), {}, limits, check_frames=refuse)
    assert (v.reason, v.new) == ("bad_frames", True) and "seq 3..4" in v.message and "not for this engine" in v.message


def test_limits_decode_applies_the_size_limits():
    limits = Limits((W,), 4, max_header_bytes=512, max_payload_bytes=8 * W * 4)
    parts = wire.encode_frames("a", np.ones((9, W), "<f4"), seq=0, t_ns=0)
    with pytest.raises(wire.WireError) as e:
        limits.decode(parts)
    assert e.value.reason == "too_large"
    with pytest.raises(wire.WireError) as e:
        limits.decode(wire.encode_denoised({"stream": "a", "seq": 0, "t_ns": 0, "t_recv_ns": 0, "t_pub_ns": 0,
                                            "lag": 0, "model": "m", "gap": 0, "warm": True, "epoch": 1}, np.ones((1, W), "<f4")))
    assert e.value.reason == "topic"  # frames/ only
    assert limits.decode(parts[:1] + wire.encode_frames("a", np.ones((8, W), "<f4"), seq=0, t_ns=0)[1:])[1]["n"] == 8


def test_service_reasons_and_the_docstring_example():
    assert set(admission.SERVICE_REASONS).isdisjoint(wire.REASONS)
    assert doctest.testmod(admission).failed == 0


def test_a_sender_limited_to_stream_prefixes_publishes_nowhere_else(limits, engine):
    known = {"rig1-a": StreamFormat((W,), np.dtype("<f4"), "rig1")}
    kw = dict(check_frames=engine.check_frames, sender="rig1", allowed=("rig1-", "shared"))
    for name in ("rig1-a", "rig1-new", "shared/x"):
        assert admit(*_msg(name), known, limits, **kw).accepted, name
    for name in ("rig2-a", "rig1", "Rig1-a"):
        v = admit(*_msg(name), known, limits, **kw)
        assert (v.reason, v.new) == ("stream_not_allowed", False), name
        assert "rig1 may publish only to streams starting with 'rig1-', 'shared'" in v.message
    # checked first: a stream it may not publish to is refused before anything else about it
    v = admit(*_msg("rig2-a", np.full((1, 150), np.nan, "<f4")), known, limits, **kw)
    assert v.reason == "stream_not_allowed"
    assert admit(*_msg("rig2-a"), known, limits, check_frames=engine.check_frames, sender="rig1").accepted


def test_one_sender_cannot_fill_the_stream_table(engine):
    limits = Limits(frame_shape=(W,), max_streams=10, max_streams_per_sender=2)
    held = {"a1": StreamFormat((W,), np.dtype("<f4"), "a"), "a2": StreamFormat((W,), np.dtype("<f4"), "a"),
            "b1": StreamFormat((W,), np.dtype("<f4"), "b")}
    v = admit(*_msg("a3"), held, limits, check_frames=engine.check_frames, sender="a")
    assert (v.reason, v.new) == ("too_many_sender_streams", False)
    assert "a already holds 2 streams (max_streams_per_sender=2)" in v.message
    assert admit(*_msg("a1"), held, limits, check_frames=engine.check_frames, sender="a").accepted  # its own go on
    assert admit(*_msg("b2"), held, limits, check_frames=engine.check_frames, sender="b").new  # others open theirs
    assert admit(*_msg("a3"), held, limits, check_frames=engine.check_frames).new  # sender unknown: the global limit
    assert admit(*_msg("a3"), held, Limits(frame_shape=(W,), max_streams=10), check_frames=engine.check_frames,
                 sender="a").new  # no per-sender limit set
