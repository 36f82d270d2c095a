"""Streams stepped together (`rtdenoise.stream.batch`), without sockets.

The reference is each stream stepped alone by its own sequencer with its own state: the
same chunks must give the same outputs (headers equal, frames to float rounding) whatever
the turns grouped, masked, grew or reused.
"""

from __future__ import annotations

import collections
import doctest

import numpy as np
import pytest
import torch

from rtdenoise.backends import load_engine
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig
from rtdenoise.stream import batch
from rtdenoise.stream.batch import Batcher
from rtdenoise.stream.sequencer import Chunk, Output, Refused, Sequencer

FS = 30.0


def imaging_checkpoint(lag: int) -> Checkpoint:
    cfg = ModelConfig(arch="imaging-unet", depth=3, width=4, lag=lag, floor=1.0, horizon=20)
    torch.manual_seed(lag)
    net = cfg.build()
    with torch.no_grad():
        net.out.conv.weight.normal_(0.0, 0.2)  # a real correction, not a near-identity
    return Checkpoint(f"tiny-imaging-lag{lag}", cfg, net.state_dict(), fs=FS)


CASES = [  # (model, backend, frame shape)
    pytest.param("spectral-lag0", "onnxruntime", (152,), id="spectral-lag0-ort"),
    pytest.param("subspace-lag3", "torch", (152,), id="subspace-lag3-torch"),
    pytest.param("imaging-lag2", "onnxruntime", (20, 27), id="imaging-lag2-ort"),
    pytest.param("imaging-lag0", "torch", (20, 27), id="imaging-lag0-torch"),
    # CUDA torch: the front end on the card and a CUDA graph per slot and per group
    pytest.param("imaging-lag2", "cuda", (20, 27), id="imaging-lag2-cuda", marks=pytest.mark.gpu),
    pytest.param("spectral-lag2", "cuda", (152,), id="spectral-lag2-cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(scope="module")
def engine_for(tiny_checkpoint):
    cache: dict = {}

    def make(model: str, backend: str):
        if backend == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")
        if (model, backend) not in cache:
            arch, _, lag = model.partition("-lag")
            ck = imaging_checkpoint(int(lag)) if arch == "imaging" else tiny_checkpoint(arch, int(lag), seed=int(lag))
            kw = {"backend": "torch", "device": "cuda"} if backend == "cuda" else {"backend": backend}
            cache[(model, backend)] = load_engine(ck, **kw)
        return cache[(model, backend)]

    return make


def test_doctests():
    assert doctest.testmod(batch, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("model, backend, shape", CASES)
def test_a_slot_is_its_stream_of_the_group(engine_for, model, backend, shape):
    eng = engine_for(model, backend)
    rng = np.random.default_rng(0)
    x = rng.poisson(50, (3, 12, *shape)).astype(np.uint16)
    group = eng.new_state(3, shape)
    slots = [eng.slot(group, i) for i in range(3)]
    own = [eng.new_state(1, shape) for _ in range(3)]
    got, want = [[] for _ in range(3)], [[] for _ in range(3)]
    for i in range(3):  # each slot alone
        got[i].append(eng.step(x[i, :4], slots[i]))
        want[i].append(eng.step(x[i, :4], own[i]))
    y = eng.step(x[:, 4:8], group)  # all together: the slots advance
    for i in range(3):
        got[i].append(y[i])
        want[i].append(eng.step(x[i, 4:8], own[i]))
    eng.reset(slots[1])  # one slot forgets; the others do not
    eng.reset(own[1])
    assert group.seen.tolist() == [8, 0, 8]
    for i in range(3):
        got[i].append(eng.flush(slots[i], x[i, 8:]))
        want[i].append(eng.flush(own[i], x[i, 8:]))
        scale = float(np.abs(np.concatenate(want[i])).max())
        np.testing.assert_allclose(np.concatenate(got[i]), np.concatenate(want[i]), rtol=0, atol=1e-6 * scale)
    assert group.seen.tolist() == [0, 0, 0]
    with pytest.raises(IndexError):
        eng.slot(group, 3)
    if eng.frame_shape == (None, None):  # an image model allocates at its first frame: no rows to view before
        with pytest.raises(ValueError, match="allocated"):
            eng.slot(eng.new_state(2), 0)


def schedule(n_streams: int, turns: int, seed: int):
    """Turns of ``{stream: [chunk args]}``: mostly one frame each, in step or not; some
    streams skip turns, some send two frames, some lose frames upstream (a gap), restart
    their seq, change ``meta`` (a new run), join late or go away (forgotten) and come back."""
    rng = np.random.default_rng(seed)
    next_seq = {s: 0 for s in range(n_streams)}
    for t in range(turns):
        turn = {}
        for s in range(n_streams):
            if s >= 4 and t < 6 * (s - 3):  # joins late: the group grows while the others are mid-context
                continue
            if s == 1 and 20 <= t < 26:  # away: forgotten at t == 22, back at 26
                continue
            r = rng.random()
            if r < 0.15:
                continue  # out of step this turn: masked
            seq = next_seq[s]
            if r < 0.2:
                seq += 3  # frames lost upstream
            elif r < 0.22:
                seq = 0  # a restarted acquisition
            n = 2 if r > 0.9 else 1
            turn[s] = (seq, n, {"run": t // 10} if s == 2 else None)
            next_seq[s] = seq + n
        yield t, turn


def headers(outs):
    return [(o.header["seq"], o.header["gap"], o.header["warm"], len(o.frames)) if isinstance(o, Output)
            else (o.reason, o.n) for o in outs]


@pytest.mark.parametrize("model, backend, shape", CASES)
@pytest.mark.parametrize("max_batch", [4, 16])
def test_stepped_together_equals_alone(engine_for, model, backend, shape, max_batch, monkeypatch):
    eng = engine_for(model, backend)
    rng = np.random.default_rng(1)
    # Together or one by one as a coin falls (what pays is measured; here both ways must agree)
    monkeypatch.setattr(batch.Group, "worth", lambda self, seqs: rng.random() < 0.8)
    n_streams = 7
    frames = {s: rng.poisson(rng.uniform(20, 200, shape), (400, *shape)).astype(np.uint16) for s in range(n_streams)}
    batcher = Batcher(eng, max_batch=max_batch)
    together = {s: Sequencer(eng, str(s), checked=True) for s in range(n_streams)}
    alone = {s: Sequencer(eng, str(s), checked=True) for s in range(n_streams)}
    got, want = collections.defaultdict(list), collections.defaultdict(list)
    for t, turn in schedule(n_streams, 60, seed=max_batch):
        if t == 22:  # stream 1 is forgotten: what it owes is flushed, its slot freed
            for seqs, outs in ((together, got), (alone, want)):
                out = seqs[1].end(0)
                outs[1] += [out] if out is not None else []
            batcher.leave(together[1])
        work = []
        for s, (seq, n, meta) in turn.items():
            c = Chunk({"seq": seq, "n": n, "t_ns": seq, "fs": FS, "meta": meta}, frames[s][seq % 390:seq % 390 + n], t)
            batcher.join(together[s], shape)
            work.append((together[s], collections.deque([c])))
            want[s] += list(alone[s].feed([c]))
        calls, (groups, rest) = batcher.calls, batcher.plan(work)
        for idx in groups:
            for seq, out in batcher.step([work[i] for i in idx]):
                got[int(seq.stream)].append(out)
        for i in rest:
            seq, items = work[i]
            got[int(seq.stream)] += list(seq.feed(items))
        assert batcher.calls == calls + len(groups)
    for s in range(n_streams):
        assert headers(got[s]) == headers(want[s]), s
        a = np.concatenate([o.frames for o in got[s] if isinstance(o, Output)])
        b = np.concatenate([o.frames for o in want[s] if isinstance(o, Output)])
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
    stats = batcher.stats()
    assert stats["batched_calls"] > 10 and stats["batched_frames"] > 2 * stats["batched_calls"]
    assert stats["slots"] == 8 and stats["members"] == n_streams  # 4 + 4, or one group of 8
    assert not any(isinstance(o, Refused) for outs in got.values() for o in outs)


def test_a_group_grows_by_doubling_and_reuses_freed_slots(engine_for):
    eng = engine_for("spectral-lag0", "onnxruntime")
    batcher = Batcher(eng, max_batch=4)
    seqs = [Sequencer(eng, str(i)) for i in range(6)]
    sizes = []
    for s in seqs:
        batcher.join(s, (152,))
        sizes.append([g.capacity for g in batcher.groups[(152,)]])
    assert sizes == [[1], [2], [4], [4], [4, 1], [4, 2]]
    batcher.leave(seqs[2])
    assert seqs[2].group is None and seqs[2].state is None
    batcher.join(seqs[2], (152,))
    assert seqs[2].slot == 2 and [g.capacity for g in batcher.groups[(152,)]] == [4, 2]
    for s in seqs[4:]:
        batcher.leave(s)
    assert [g.capacity for g in batcher.groups[(152,)]] == [4]  # an empty group is dropped
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(eng, max_batch=0)


@pytest.mark.parametrize("model, backend, shape", [CASES[0], CASES[2], CASES[3], CASES[4]])
def test_streams_out_of_step_are_masked_not_stepped(engine_for, model, backend, shape):
    eng = engine_for(model, backend)
    batcher = Batcher(eng, max_batch=4)
    seqs = [Sequencer(eng, str(i), checked=True) for i in range(3)]
    x = np.random.default_rng(2).poisson(80, (3, 3, *shape)).astype(np.uint16)
    for s in seqs:
        batcher.join(s, shape)
    for t in range(2):  # every stream has seen two frames
        work = [(s, collections.deque([Chunk({"seq": t, "n": 1, "t_ns": t}, x[i, t:t + 1], 0)])) for i, s in enumerate(seqs)]
        list(batcher.step(work))
    rows = [_host(a[2]) for a in eng.slot_arrays(seqs[0].group.state)]  # stream 2's past
    work = [(s, collections.deque([Chunk({"seq": 2, "n": 1, "t_ns": 2}, x[i, 2:3], 0)])) for i, s in enumerate(seqs[:2])]
    outs = list(batcher.step(work))
    assert [s.stream for s, _ in outs] == (["0", "1"] if eng.lag < 3 else [])  # 3 frames in: frame 2 - lag out
    for a, b in zip(eng.slot_arrays(seqs[0].group.state), rows):
        np.testing.assert_array_equal(_host(a[2]), b)
    assert batcher.calls == 3 and int(seqs[2].state.seen[0]) == 2 and int(seqs[0].state.seen[0]) == 3


def _host(a) -> np.ndarray:
    return a.detach().cpu().numpy().copy() if isinstance(a, torch.Tensor) else np.array(a)


def test_streams_go_together_only_where_one_call_measures_faster(engine_for):
    eng = engine_for("spectral-lag0", "onnxruntime")
    batcher = Batcher(eng, max_batch=4)
    seqs = [Sequencer(eng, str(i)) for i in range(4)]
    for s in seqs:
        batcher.join(s, (152,))
    g = seqs[0].group
    assert g.worth(seqs)  # nothing measured: try the call
    g.frame_ns.append(1e6)
    assert not g.worth(seqs)  # the call is measured, one by one is not: try that
    for s in seqs:
        s.frame_ns.extend([0.5e6, 0.5e6])
    g.choices = 0
    # 4 streams at 0.5 ms each: a mean wait of 1.25 ms one by one, against 1 ms for the call
    assert [g.worth(seqs) for _ in range(batch.EXPLORE)] == [True] * (batch.EXPLORE - 1) + [False]
    g.frame_ns.extend([2e6, 2e6])  # a CPU core: the call costs as much as the streams one by one
    assert not g.worth(seqs) and not g.worth(seqs[:2])


def _turn(batcher, seqs, frames, seq_no):
    """One turn of one frame per stream through ``batcher.step``; outputs by stream name."""
    work = [(s, collections.deque([Chunk({"seq": seq_no, "n": 1, "t_ns": seq_no}, f[None], 0)])) for s, f in zip(seqs, frames)]
    outs = collections.defaultdict(list)
    for s, out in batcher.step(work):
        outs[s.stream].append(out)
    return outs


def test_an_unchecked_stream_stepped_together_refuses_bad_frames_as_alone(engine_for):
    eng = engine_for("spectral-lag0", "onnxruntime")
    batcher = Batcher(eng, max_batch=4)
    seqs = [Sequencer(eng, str(i)) for i in range(2)]  # checked=False: they validate their own frames
    alone = Sequencer(eng, "alone")
    for s in seqs:
        batcher.join(s, (152,))
    x = np.full((3, 152), 100.0, "<f4")
    bad = x[1].copy()
    bad[5] = np.nan
    _turn(batcher, seqs, [x[0], x[0]], 0)
    list(alone.feed([Chunk({"seq": 0, "n": 1, "t_ns": 0}, x[:1], 0)]))
    outs = _turn(batcher, seqs, [bad, x[1]], 1)
    want = list(alone.feed([Chunk({"seq": 1, "n": 1, "t_ns": 1}, bad[None], 0)]))
    assert [(o.reason, o.n) for o in outs["0"]] == [(o.reason, o.n) for o in want] == [("bad_frames", 1)]
    assert isinstance(outs["1"][0], Output)
    assert int(seqs[0].state.seen[0]) == 1 and int(seqs[1].state.seen[0]) == 2  # nothing of the bad frame stepped


def test_a_failed_call_counts_every_streams_frames_and_they_go_on(engine_for, monkeypatch):
    eng = engine_for("imaging-lag2", "onnxruntime")
    batcher = Batcher(eng, max_batch=4)
    seqs = [Sequencer(eng, str(i), checked=True) for i in range(3)]
    for s in seqs:
        batcher.join(s, (20, 27))
    x = np.random.default_rng(3).poisson(80, (6, 20, 27)).astype(np.uint16)
    for t in range(3):
        _turn(batcher, seqs, [x[t]] * 3, t)
    step = eng.step

    def fails(frames, state, **kw):  # a GPU error in the group's call
        if state.batch > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return step(frames, state, **kw)

    monkeypatch.setattr(eng, "step", fails)
    outs = _turn(batcher, seqs[:2], [x[3]] * 2, 3)
    monkeypatch.undo()
    for s in seqs[:2]:  # the frame and the 2 owed by the lag: dropped, counted, the stream reset
        (r,) = outs[s.stream]
        assert (r.reason, r.n) == ("internal_error", 3) and "illegal memory access" in r.message
        assert s.fresh and s.next_seq == 4 and int(s.state.seen[0]) == 0
    assert int(seqs[2].state.seen[0]) == 3  # the masked stream was not touched
    outs = _turn(batcher, seqs, [x[4]] * 3, 4)
    assert not outs["0"] and not outs["1"]  # a fresh context: its first 2 outputs wait for the lag
    assert [(o.header["seq"], len(o.frames)) for o in outs["2"]] == [(1, 2)]  # it missed seq 3: its 2 owed, flushed
    outs = _turn(batcher, seqs, [x[5]] * 3, 5)
    assert not outs["0"]
    outs = _turn(batcher, seqs, [x[5]] * 3, 6)
    assert [(o.header["seq"], o.header["gap"]) for o in outs["0"]] == [(4, 3)]  # the gap counts the 3 dropped


def test_a_stream_that_stepped_alone_keeps_its_past_when_it_joins(engine_for):
    eng = engine_for("subspace-lag3", "torch")
    x = np.random.default_rng(4).poisson(300, (12, 152)).astype("<f4")
    ref = Sequencer(eng, "a")
    want = [o for t in range(12) for o in ref.feed([Chunk({"seq": t, "n": 1, "t_ns": t}, x[t:t + 1], 0)])]
    batcher = Batcher(eng, max_batch=4)
    other, seq = Sequencer(eng, "b"), Sequencer(eng, "a")
    batcher.join(other, (152,))
    got = [o for t in range(6) for o in seq.feed([Chunk({"seq": t, "n": 1, "t_ns": t}, x[t:t + 1], 0)])]
    batcher.join(seq, (152,))  # e.g. joining had failed before (no memory to grow the group)
    assert seq.group is other.group
    for t in range(6, 12):
        got += _turn(batcher, [other, seq], [x[t], x[t]], t)["a"]
    assert [o.header["seq"] for o in got] == [o.header["seq"] for o in want]
    np.testing.assert_allclose(np.concatenate([o.frames for o in got]), np.concatenate([o.frames for o in want]),
                               rtol=0, atol=1e-4)
