"""Sequencing without sockets: seq numbers, gaps, restarts, the lag flush, output headers, the bounded queue.

:class:`~rtdenoise.stream.sequencer.Sequencer` is what the service's engine thread runs per
stream, :class:`~rtdenoise.stream.sequencer.Inbox` what its receive thread runs; here they
take chunks directly. The reference is offline :func:`rtdenoise.denoise.denoise` of the
same checkpoint on the same frames.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtdenoise.denoise import denoise
from rtdenoise.stream import sequencer
from rtdenoise.stream.sequencer import Chunk, Inbox, Output, Refused, Sequencer

FS = 5.0
T0 = 1_700_000_000_000_000_000
W = 152


def t_of(seq: int) -> int:
    return T0 + round(seq * 1e9 / FS)


def chunk(x, seq, *, fs=FS, meta=None, t_recv=0) -> Chunk:
    header = {"seq": seq, "n": len(x), "t_ns": t_of(seq) if fs else 123, **({"fs": fs} if fs else {}),
              **({"meta": meta} if meta is not None else {})}
    return Chunk(header, np.asarray(x), t_recv)


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    """``engines(arch, lag) -> (Engine, Checkpoint)``, cached."""
    from rtdenoise.backends import load_engine

    cache = {}

    def make(arch="spectral", lag=0):
        if (arch, lag) not in cache:
            ck = tiny_checkpoint(arch, lag, seed=lag)
            cache[(arch, lag)] = (load_engine(ck), ck)
        return cache[(arch, lag)]

    return make


@pytest.fixture(scope="module")
def rec():
    from rtdenoise.synth import simulate

    return lambda n, seed=0: simulate(n, seed=seed, photons=2000)["noisy"]


def outputs(items):
    got = list(items)
    assert all(isinstance(o, Output) for o in got), got
    return got


def frames_of(outs):
    return np.concatenate([o.frames for o in outs])


def assert_same(got, ref):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


class _Recorder:
    """An engine that records the size of each step and whether it was checked already."""

    def __init__(self, engine, fail_at=None):
        self._e, self.steps, self.fail_at = engine, [], fail_at

    def __getattr__(self, name):
        return getattr(self._e, name)

    def step(self, x, state, **kw):
        self.steps.append((len(x), kw.get("checked", False)))
        if self.fail_at is not None and len(self.steps) == self.fail_at:
            raise ValueError("refused by the test")
        return self._e.step(x, state, **kw)


# ----------------------------------------------------------------------------- equals offline


@pytest.mark.parametrize(
    "arch,lag,size",
    [
        pytest.param("spectral", 0, 1, id="lag0-chunk1"),
        pytest.param("spectral", 0, 5, id="lag0-chunk5"),
        pytest.param("subspace", 2, 1, id="lag2-chunk1"),
        pytest.param("subspace", 2, 5, id="lag2-chunk5"),
    ],
)
def test_stream_equals_offline_and_headers_describe_the_output_frames(engines, rec, arch, lag, size):
    engine, ck = engines(arch, lag)
    x = rec(120)
    seq = Sequencer(engine, "rig1", first_seq=0)
    outs = []
    for i in range(0, 120, size):
        outs += outputs(seq.feed([chunk(x[i:i + size], i, t_recv=1000 + i)]))
        assert seq.in_flight == min(lag, i + size)
    assert sum(len(o.frames) for o in outs) == 120 - lag  # the last `lag` frames wait for their future...
    flush = seq.reset(t_recv=5)  # ...or a reset flushes them
    assert (flush is None) == (lag == 0) and seq.in_flight == 0 and seq.resets == 1
    outs += [flush] if flush else []
    y = frames_of(outs)
    if lag == 0:
        np.testing.assert_array_equal(y, denoise(x, model=ck, chunk=size))  # bit for bit, same chunking
    else:
        assert_same(y, denoise(x, model=ck))
    rf, s = engine.receptive_field, 0
    for o in outs:
        h = o.header
        assert h["seq"] == s and h["t_ns"] == t_of(s) and h["fs"] == FS and "meta" not in h
        assert (h["stream"], h["lag"], h["model"], h["gap"]) == ("rig1", lag, ck.name, 0)
        assert h["warm"] == (h["seq"] + 1 >= rf)  # every frame of the message had a full context
        assert o.frames.dtype == np.float32 and o.frames.flags.c_contiguous and "t_pub_ns" not in h
        if o is flush:
            assert o.chunks is None and h["t_recv_ns"] == 5
        else:
            assert h["t_recv_ns"] == min(c.t_recv_ns for c in o.chunks)
        s += len(o.frames)
    assert not outs[0].header["warm"]


def test_flush_is_bit_identical_to_stepping_the_repeated_last_frame(engines, rec):
    """What the service did before Engine.flush: one k-frame step of the last frame, repeated."""
    engine, _ = engines("subspace", 2)
    x = rec(30)
    for n_before in (1, 2, 30):  # fewer frames than the lag, as many, more
        seq = Sequencer(engine, "f")
        outputs(seq.feed([chunk(x[:n_before], 0)]))
        flushed = seq.reset(t_recv=0)
        state = engine.new_state(1)
        engine.step(x[:n_before], state)
        owed = min(2, n_before)
        old = engine.step(np.repeat(x[n_before - 1][None], 2, axis=0), state)[2 - owed:]
        np.testing.assert_array_equal(flushed.frames, old)
        assert flushed.header["seq"] == n_before - owed


# ----------------------------------------------------------------------------- seq gaps, restarts


def test_gap_flushes_resets_and_is_flagged_restart_flushes_and_starts_afresh(engines, rec):
    engine, ck = engines("spectral", 2)
    x = rec(120)
    seq = Sequencer(engine, "g", first_seq=0)
    outs = []
    for i in range(60):
        outs += outputs(seq.feed([chunk(x[i:i + 1], i)]))
    for i in range(70, 120):  # seq 60..69 never arrive
        outs += outputs(seq.feed([chunk(x[i:i + 1], i, t_recv=i)]))
    pre = [o for o in outs if o.header["seq"] < 60]
    post = [o for o in outs if o.header["seq"] >= 70]
    # Before the gap: as offline on frames 0..59 (the lag's 2 frames flushed at the gap, first).
    assert sum(len(o.frames) for o in pre) == 60 and all(o.header["gap"] == 0 for o in pre)
    assert pre[-1].chunks is None and pre[-1].header["t_recv_ns"] == 70  # the flush: caused by seq 70's arrival
    assert_same(frames_of(pre), denoise(x[:60], model=ck))
    # After it: a fresh context, as offline on the post-gap frames; the first message says what is missing.
    assert post[0].header["seq"] == 70 and post[0].header["gap"] == 10 and not post[0].header["warm"]
    assert all(o.header["gap"] == 0 for o in post[1:])
    assert_same(frames_of(post), denoise(x[70:], model=ck)[:48])
    assert [o.header["t_ns"] for o in post[:2]] == [t_of(70), t_of(71)]

    # seq going back: a restarted acquisition; what is owed (118, 119) is flushed first, no gap flagged.
    again = []
    for i in range(20):
        again += outputs(seq.feed([chunk(x[i:i + 1], i)]))
    assert [o.header["seq"] for o in again][:2] == [118, 0] and len(again[0].frames) == 2
    assert all(o.header["gap"] == 0 for o in again) and not again[1].header["warm"]
    assert_same(frames_of(again[1:]), denoise(x[:20], model=ck)[:18])


def test_frames_dropped_before_the_first_step_show_as_a_gap(engines, rec):
    engine, _ = engines("spectral", 0)
    seq = Sequencer(engine, "d", first_seq=100)  # the stream's first message was seq 100; it was dropped
    (out,) = outputs(seq.feed([chunk(rec(3), 103)]))
    assert (out.header["seq"], out.header["gap"]) == (103, 3)
    seq = Sequencer(engine, "any")  # no first seq: takes whatever comes
    (out,) = outputs(seq.feed([chunk(rec(3), 103)]))
    assert (out.header["seq"], out.header["gap"]) == (103, 0)


# ----------------------------------------------------------------------------- runs, pieces, refusals


def test_contiguous_chunks_are_one_step_and_one_message_fs_or_meta_split_runs(engines, rec):
    base, ck = engines("spectral", 0)
    engine = _Recorder(base)
    x = rec(20)
    seq = Sequencer(engine, "r", first_seq=0, checked=True)  # as the service makes it: admission checked each
    outs = outputs(seq.feed([chunk(x[0:3], 0, t_recv=7), chunk(x[3:6], 3, t_recv=5), chunk(x[6:9], 6, t_recv=9)]))
    assert [len(o.frames) for o in outs] == [9] and engine.steps == [(9, True)]  # one step, checked on arrival
    assert outs[0].header["t_recv_ns"] == 5 and len(outs[0].chunks) == 3  # the oldest arrival
    engine.steps.clear()
    outs = outputs(seq.feed([chunk(x[9:11], 9), chunk(x[11:13], 11, meta={"a": 1}), chunk(x[13:15], 13, meta={"a": 1}),
                             chunk(x[15:17], 15, fs=10.0, meta={"a": 1})]))
    assert [(o.header["seq"], len(o.frames)) for o in outs] == [(9, 2), (11, 4), (15, 2)]
    assert [o.header.get("meta") for o in outs] == [None, {"a": 1}, {"a": 1}]
    assert outs[2].header["fs"] == 10.0 and outs[2].header["t_ns"] == t_of(15)  # each frame's own time
    assert all(o.header["gap"] == 0 for o in outs) and engine.steps == [(2, True), (4, True), (2, True)]
    assert_same(frames_of(outs), denoise(x, model=ck)[9:17])


def test_a_big_run_is_stepped_in_bounded_pieces(engines, rec):
    base, ck = engines("spectral", 0)
    engine = _Recorder(base)
    x = rec(10)
    (out,) = outputs(Sequencer(engine, "big", max_step=4, checked=True).feed([chunk(x[:6], 0), chunk(x[6:], 6)]))
    assert engine.steps == [(4, True), (4, True), (2, True)] and len(out.frames) == 10
    assert_same(out.frames, denoise(x, model=ck))


def test_on_its_own_a_sequencer_validates_what_it_steps(engines, rec):
    base, ck = engines("spectral", 0)
    engine = _Recorder(base)
    x = rec(6)
    bad = x[2:4].copy()
    bad[1, 7] = np.nan
    seq = Sequencer(engine, "alone", first_seq=0)
    items = list(seq.feed([chunk(x[:2], 0)])) + list(seq.feed([chunk(bad, 2)]))
    assert [type(o) for o in items] == [Output, Refused] and "NaN" in items[1].message
    assert engine.steps[0] == (2, False) and int(seq.state.seen[0]) == 2  # the bad run touched no state


def test_a_run_the_engine_refuses_is_reported_and_the_next_shows_the_jump(engines, rec):
    base, ck = engines("spectral", 0)
    engine = _Recorder(base, fail_at=2)
    x = rec(6)
    seq = Sequencer(engine, "bad", first_seq=0)
    items = list(seq.feed([chunk(x[:2], 0)])) + list(seq.feed([chunk(x[2:4], 2)])) + list(seq.feed([chunk(x[4:], 4)]))
    assert [type(o) for o in items] == [Output, Refused, Output]
    assert items[1].n == 2 and items[1].message.startswith("seq 2..3: ") and "refused by the test" in items[1].message
    assert (items[2].header["seq"], items[2].header["gap"]) == (4, 2)  # nothing stepped for 2..3: a jump
    np.testing.assert_array_equal(items[2].frames, denoise(x[4:], model=ck))  # a fresh context


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("arch,lag", [("subspace", 0), ("subspace", 2)])
def test_a_non_finite_step_is_never_published_the_stream_resets_and_the_gap_says_so(engines, rec, arch, lag):
    """Reliability B: one extreme frame that slips past validation (as ``checked=True`` trusts
    admission) drives the state to inf; nothing non-finite leaves, the outputs owed are
    dropped and counted, the stream starts afresh right after, seq and gap stay true."""
    engine, ck = engines(arch, lag)
    x = rec(30).astype("<f4")
    x[10] = 3e38
    seq = Sequencer(engine, "hot", first_seq=0, checked=True)
    items = [o for i in range(0, 30, 5) for o in seq.feed([chunk(x[i:i + 5], i)])]
    outs = [o for o in items if isinstance(o, Output)]
    lost = [o for o in items if isinstance(o, Refused)]
    assert all(np.isfinite(o.frames).all() for o in outs)
    assert len(lost) == 1 and lost[0].reason == "non_finite_output" and lost[0].n == 5 + lag
    after = [o for o in outs if o.header["seq"] >= 15]
    assert after[0].header["seq"] == 15 and after[0].header["gap"] == 5 + lag
    assert sum(len(o.frames) for o in outs) + lost[0].n + seq.in_flight == 30  # every frame accounted for
    s = 0
    for o in outs:  # every output labelled with its own input's seq
        s = o.header["seq"] if o.header["gap"] else s
        assert o.header["seq"] == s
        s += len(o.frames)
    assert_same(frames_of(after), denoise(x[15:], model=ck)[: sum(len(o.frames) for o in after)])  # a fresh context


def test_frame_times_that_overflow_are_refused_before_the_engine_steps(engines, rec):
    """Reliability A: fs=1e-300 used to fail after the engine had used the frames, and every
    later output of the stream carried the wrong seq."""
    base, ck = engines("spectral", 0)
    engine = _Recorder(base)
    x = rec(6)
    seq = Sequencer(engine, "slow", first_seq=0)
    first = list(seq.feed([chunk(x[:2], 0)]))
    bad = list(seq.feed([Chunk({"seq": 2, "n": 2, "t_ns": 0, "fs": 1e-300}, x[2:4], 0)]))
    assert [type(o) for o in bad] == [Refused] and bad[0].reason == "time_range" and len(engine.steps) == 1
    after = outputs(seq.feed([chunk(x[4:], 4)]))
    assert (after[0].header["seq"], after[0].header["gap"]) == (4, 2) and len(first[0].frames) == 2


def test_an_output_that_could_not_be_sent_shows_as_a_gap_not_a_shifted_seq(engines, rec):
    engine, _ = engines("spectral", 0)
    x = rec(6)
    seq = Sequencer(engine, "s", first_seq=0)
    outputs(seq.feed([chunk(x[:3], 0)]))
    seq.lost(3)  # what the service does when the send of that output fails
    nxt = outputs(seq.feed([chunk(x[3:], 3)]))[0]
    assert (nxt.header["seq"], nxt.header["gap"]) == (3, 3)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6), limit=st.integers(1, 7), fs=st.sampled_from([None, 3.0]))
def test_taking_pieces_of_the_queue_changes_nothing_downstream(engines, rec, sizes, limit, fs):
    """Fair scheduling hands the engine one piece at a time; outputs, seq and t_ns are those
    of taking everything at once."""
    engine, _ = engines("subspace", 2)
    x = rec(sum(sizes))
    starts = np.cumsum([0] + sizes[:-1])

    def run(piece):
        box, seq, outs = Inbox(1000), Sequencer(engine, "s", first_seq=0), []
        for a, n in zip(starts, sizes):
            box.put(chunk(x[a:a + n], int(a), fs=fs))
        while box.queued:
            before = box.queued
            outs += outputs(seq.feed(box.take(piece)))
            assert before - box.queued == min(before, piece or before)
        return outs

    whole, pieces = run(None), run(limit)
    assert sum(len(o.frames) for o in pieces) == sum(len(o.frames) for o in whole) == max(0, sum(sizes) - 2)
    if whole:
        np.testing.assert_allclose(frames_of(pieces), frames_of(whole), rtol=1e-5, atol=1e-3)
    for o in pieces:  # each output's first frame keeps its own time within the message it came in
        s0 = o.header["seq"]
        a = max(int(b) for b in starts if b <= s0)
        assert o.header["t_ns"] == (t_of(a) + round((s0 - a) * 1e9 / fs) if fs else 123)


def test_frame_times_without_fs_are_the_chunks_own():
    c = chunk(np.zeros((3, 4)), 0, fs=None)
    assert c.frame_times() == [123, 123, 123] and c.fs is None
    assert chunk(np.zeros((2, 4)), 0).frame_times() == [t_of(0), t_of(1)]


# ----------------------------------------------------------------------------- the receive side


def test_inbox_counts_jumps_on_arrival_and_drops_the_oldest_on_overflow():
    box = Inbox(max_queue=4)

    def put(seq, n=1):
        box.put(chunk(np.zeros((n, 4)), seq))

    put(0, 2), put(2), put(10), put(3), put(3)  # 3..9 missing; then back to 3 twice: restarts
    assert (box.gaps, box.frames_missing, box.restarts) == (1, 7, 2)
    assert (box.frames_in, box.messages_in, box.next_seq) == (6, 5, 4)
    assert box.dropped == 2 and box.queued == 4 and [c.seq for c in box.queue] == [2, 10, 3, 3]  # 0..1 went first
    put(4, 10)  # bigger than max_queue: everything older goes, it is kept whole
    assert box.dropped == 6 and box.queued == 10 and [c.seq for c in box.queue] == [4]
    items = box.take()
    assert [c.seq for c in items] == [4] and box.queued == 0 and not box.queue
    box.put(Chunk({"seq": 14, "n": 1, "t_ns": 0}, np.zeros((1, 4)), 0))
    assert box.queued == 1 and box.gaps == 1  # 14 follows 4 + 10


# ----------------------------------------------------------------------------- every frame accounted for

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 4)),
        st.tuples(st.just("lose"), st.integers(1, 5)),  # frames lost upstream
        st.tuples(st.just("restart"), st.integers(0, 3)),  # the acquisition starts again at seq 0..3
        st.tuples(st.just("engine"), st.just(0)),  # the engine thread takes everything waiting
        st.tuples(st.just("reset"), st.just(0)),  # a reset request
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, max_queue=st.integers(1, 8))
def test_every_frame_is_accounted_for_whatever_happens(engines, ops, max_queue):
    """frames_in == frames_out + dropped + discarded + queue_depth + in_flight, at every step;
    without restarts or resets, the outputs' gaps add up to what was lost upstream and dropped here."""
    engine, _ = engines("subspace", 2)
    box, seq, out = Inbox(max_queue), None, []
    frame = np.full((1, W), 100.0, "<f4")
    nxt = 0
    restarted = reset = False  # (after either, a jump is a fresh start, not a gap)

    def turn(reset=False):
        if reset:
            f = seq.reset(t_recv=0)
            out.extend([f] if f else [])
        for o in seq.feed(box.take()):
            assert isinstance(o, Output)
            out.append(o)

    for op, k in ops:
        if op == "send":
            c = chunk(np.repeat(frame, k, axis=0), nxt)
            if seq is None:
                seq = Sequencer(engine, "acc", first_seq=c.seq)
            box.put(c)
            nxt += k
        elif op == "lose":
            nxt += k
        elif op == "restart":
            restarted = restarted or seq is not None
            nxt = k
        elif seq is not None:
            reset = reset or op == "reset"
            turn(reset=op == "reset")
        if seq is not None:
            frames_out = sum(len(o.frames) for o in out)
            assert box.frames_in == frames_out + box.dropped + box.queued + seq.in_flight, (ops, box.__dict__)
    if seq is None:
        return
    turn()
    turn(reset=True)  # the end: everything owed flushed
    frames_out = sum(len(o.frames) for o in out)
    assert seq.in_flight == 0 and box.queued == 0 and box.frames_in == frames_out + box.dropped
    assert all(len(o.frames) >= 1 for o in out)
    if not restarted and not reset:
        # Each jump the sequencer sees is flagged once, in the next output: lost upstream or dropped here.
        assert sum(o.header["gap"] for o in out) == box.frames_missing + box.dropped


def test_docstring_example_runs():
    assert doctest.testmod(sequencer).failed == 0
