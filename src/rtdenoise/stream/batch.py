"""Streams stepped together: one engine call for the new frames of many streams of one model.

Each stream's state is a slot of a **group** state (:meth:`Engine.slot
<rtdenoise.backends.base.Engine.slot>`: views of the group's rows), one group per frame
shape, of up to ``max_batch`` slots. So a stream can always be stepped alone (its
:class:`~rtdenoise.stream.sequencer.Sequencer` steps its slot, as it would its own state),
and streams of a group can be stepped in one call:

- A turn of the engine thread in which several streams of a group each have one run of
  ``n`` new frames steps them together: the group state on ``(slots, n, *frame)``. The
  slots with no frames this turn are **masked**: their rows are saved before the call and
  restored after, so a stream out of step with the others neither waits for them nor is
  advanced by them.
- Gaps, restarts, flushes, resets and non-finite outputs stay each sequencer's: it prepares
  the run (:meth:`Sequencer.begin <rtdenoise.stream.sequencer.Sequencer.begin>`) and takes
  its rows of the outputs (:meth:`~rtdenoise.stream.sequencer.Sequencer.finish`); the
  outputs equal those of stepping each stream alone (to float rounding).
- Whether a call for ``k`` streams pays is measured, not assumed: a GPU steps 16 slots in
  about the time of one, a CPU core 16 images in about 16 times that (and the masked slots
  cost as much as the others). A call holds every output until it ends, while one by one
  the ``i``-th stream waits ``i`` steps, so streams go together when the group's step per
  frame < (``k`` + 1) / 2 × their own: a lower mean wait, and so a higher throughput too.
  Both are medians of the last 16 steps, a state's first step left out
  (it makes buffers, bindings, a CUDA graph); every :data:`EXPLORE` th choice goes the
  other way, so both stay measured.
- A group grows by doubling (1, 2, 4, … ``max_batch`` slots), its rows copied and its
  members' slots made anew, so a few streams never pay for ``max_batch``; a slot freed by a
  stream that was forgotten is reused.

Examples
--------
Two streams, each with its own sequencer, stepped in one call:

>>> import collections, numpy as np
>>> from rtdenoise.backends import load_engine
>>> from rtdenoise.stream.sequencer import Chunk, Sequencer
>>> engine = load_engine("spectral-lag0")
>>> batcher = Batcher(engine, max_batch=16)
>>> seqs = [Sequencer(engine, name) for name in ("a", "b")]
>>> for s in seqs:
...     batcher.join(s, (152,))
>>> frame = np.full((1, 152), 100.0, "<f4")
>>> work = [(s, collections.deque([Chunk({"seq": 0, "n": 1, "t_ns": 0}, frame, 0)])) for s in seqs]
>>> together, alone = batcher.plan(work)
>>> together, alone
([[0, 1]], [])
>>> [(s.stream, out.header["seq"]) for s, out in batcher.step([work[i] for i in together[0]])]
[('a', 0), ('b', 0)]
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any, Iterable, Iterator

import numpy as np

from rtdenoise.stream.sequencer import Chunk, Output, Refused, Sequencer, follows

__all__ = ["Batcher", "Group", "EXPLORE"]

EXPLORE = 50  # every EXPLORE-th choice between one call and one-by-one goes the other way, to keep both measured


class Group:
    """A state of ``capacity`` streams of one frame shape, each member's state a slot of it."""

    def __init__(self, engine: Any, shape: tuple[int, ...], capacity: int = 1):
        self.engine, self.shape = engine, tuple(shape)
        self.state = engine.new_state(capacity, self.shape)
        self.members: list[Sequencer | None] = [None] * capacity
        self.frame_ns: deque[float] = deque(maxlen=16)  # ns per frame of this group's calls
        self.warm = False  # called since the state was made
        self.choices = 0

    @property
    def capacity(self) -> int:
        return self.state.batch

    def has_room(self) -> bool:
        return None in self.members

    def join(self, seq: Sequencer) -> None:
        """Give ``seq`` a free slot: a fresh context, or the past of the state it stepped on alone."""
        i = self.members.index(None)
        own, view = seq.state, self.engine.slot(self.state, i)
        if own is not None and own.net is not None:  # it stepped alone (joining had failed): its past comes along
            arrays = self.engine.slot_arrays(view)
            for a, b in zip(arrays, self.engine.slot_arrays(own)):
                a[...] = b
            _settle(arrays)
        else:
            self.engine.reset(view)
        self.members[i] = seq
        seq.state, seq.group, seq.slot = view, self, i

    def leave(self, seq: Sequencer) -> None:
        self.members[seq.slot] = None
        seq.state = seq.group = seq.slot = None

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` streams: the members' rows are copied, their slots made anew."""
        old, new = self.state, self.engine.new_state(capacity, self.shape)
        arrays = self.engine.slot_arrays(new)
        for a, b in zip(arrays, self.engine.slot_arrays(old)):
            a[: old.batch] = b
        _settle(arrays)
        self.state = new
        self.members += [None] * (capacity - old.batch)
        for i, seq in enumerate(self.members):
            if seq is not None:
                seq.state = self.engine.slot(new, i)
        self.frame_ns.clear()
        self.warm = False

    def worth(self, seqs: list[Sequencer]) -> bool:
        """Step ``seqs`` (members with runs of the same length) in one call rather than one by one?"""
        self.choices += 1
        if not self.frame_ns:  # not measured yet: try the call
            return True
        own = [t for s in seqs for t in s.frame_ns]
        if not own:  # nor one by one
            return False
        # One call holds every output until its end; one by one, the i-th of k waits i steps:
        # together only if that lowers the mean wait (and so also the total).
        together = statistics.median(self.frame_ns) < (len(seqs) + 1) / 2 * statistics.median(own)
        return together != (self.choices % EXPLORE == 0)


class Batcher:
    """The groups of one engine, and which streams of a turn to step together.

    ``max_batch``: most streams per engine call (1: every stream is stepped alone).
    """

    def __init__(self, engine: Any, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 stream, got {max_batch}")
        self.engine, self.max_batch = engine, int(max_batch)
        self.groups: dict[tuple[int, ...], list[Group]] = {}
        self.calls = self.frames = 0  # engine calls for several streams, and the frames they stepped

    def join(self, seq: Sequencer, shape: tuple[int, ...]) -> None:
        """Put ``seq`` (a stream of frames of ``shape``) in a group, unless it is in one."""
        if seq.group is not None:
            return
        shape = tuple(shape)
        most = self.most(shape)
        groups = self.groups.setdefault(shape, [])
        g = next((g for g in groups if g.has_room()), None)
        if g is None:
            g = next((g for g in groups if g.capacity < most), None)
            if g is not None:
                g.grow(min(most, 2 * g.capacity))
            else:
                g = Group(self.engine, shape)
                groups.append(g)
        g.join(seq)

    def most(self, shape: tuple[int, ...]) -> int:
        """Most streams of frames of ``shape`` in one group."""
        return min(self.max_batch, self.engine.slot_limit(tuple(shape)) or self.max_batch)

    def sizes(self, shape: tuple[int, ...]) -> list[int]:
        """The capacities a group of ``shape`` grows through: 1, 2, 4, ... :meth:`most`."""
        most, sizes = self.most(shape), [1]
        while sizes[-1] < most:
            sizes.append(min(most, 2 * sizes[-1]))
        return sizes

    def leave(self, seq: Sequencer) -> None:
        """Free ``seq``'s slot (a stream forgotten); an empty group is dropped."""
        g = seq.group
        if g is None:
            return
        g.leave(seq)
        if not any(g.members):
            groups = self.groups[g.shape]
            groups.remove(g)
            if not groups:
                del self.groups[g.shape]

    def plan(self, work: list[tuple[Sequencer, Iterable[Chunk]]]) -> tuple[list[list[int]], list[int]]:
        """Split a turn, ``(sequencer, chunks)`` per stream, into calls for several streams
        (lists of indices into ``work``: streams of one group with one run of the same
        length each) and the rest, to be fed one by one (indices, in order)."""
        runs: dict[tuple[int, int], list[int]] = {}
        for i, (seq, items) in enumerate(work):
            g = seq.group
            if g is None or g.capacity < 2 or not items or not _one_run(items):
                continue
            n = sum(c.n for c in items)
            if n == 1 or n * g.capacity <= self.engine.max_step(g.shape):  # bounded memory, as one stream's steps
                runs.setdefault((id(g), n), []).append(i)
        together = [idx for idx in runs.values()
                    if len(idx) > 1 and work[idx[0]][0].group.worth([work[i][0] for i in idx])]
        taken = {i for idx in together for i in idx}
        return together, [i for i in range(len(work)) if i not in taken]

    def step(self, work: list[tuple[Sequencer, Iterable[Chunk]]]) -> Iterator[tuple[Sequencer, Output | Refused]]:
        """Step streams of one group (one run of the same length each, as :meth:`plan` chose)
        in one engine call; yield each stream's outputs as its sequencer makes them."""
        ready = []
        for seq, items in work:
            before, step = seq.begin(list(items))
            for out in before:
                yield seq, out
            if step is not None and not seq.checked:  # as its own step would: a bad run is refused, nothing stepped
                try:
                    self.engine.check_frames(step.x, shape=seq.group.shape)
                except (ValueError, TypeError) as e:
                    yield seq, seq.refuse(step, e)
                    continue
            if step is not None:
                ready.append((seq, step))
        if len(ready) == 1:
            seq, step = ready[0]
            for out in seq.advance(step):
                yield seq, out
        if len(ready) < 2:
            return
        g, n = ready[0][0].group, ready[0][1].x.shape[0]
        x = np.zeros((g.capacity, n, *g.shape), dtype=np.result_type(*(step.x.dtype for _, step in ready)))
        for seq, step in ready:
            x[seq.slot] = step.x
        slots = {seq.slot for seq, _ in ready}
        masked = [i for i in range(g.capacity) if i not in slots]
        arrays = self.engine.slot_arrays(g.state)
        saved = _rows(arrays, masked) if masked else None
        t0 = time.perf_counter_ns()
        try:
            y = self.engine.step(x, g.state, checked=True)
        except (ValueError, TypeError) as e:  # refused: as for one stream (nothing was published)
            for seq, step in ready:
                yield seq, seq.refuse(step, e)
            return
        except Exception as e:  # noqa: BLE001 - failed (a GPU error): each stream counts its frames and goes on
            for seq, step in ready:
                yield seq, seq.fail(step, e)
            return
        finally:
            if saved is not None:  # the masked streams' rows as they were: they were not stepped
                for a, s in zip(arrays, saved):
                    a[masked] = s
                _settle(arrays)
        took = time.perf_counter_ns() - t0
        if g.warm:  # the first call of a state (buffers, bindings, a CUDA graph) says nothing of the next ones
            g.frame_ns.append(took / n)
        g.warm = True
        self.calls += 1
        self.frames += n * len(ready)
        share = took // len(ready)  # each output's engine time: its share of the call
        # Every stream's outputs before any is handed on: a consumer that fails on one leaves no
        # stream stepped but unfinished.
        outs = [(seq, out) for seq, step in ready for out in list(seq.finish(step, y[seq.slot], share))]
        yield from outs

    def stats(self) -> dict:
        """Groups, slots in use, and the calls for several streams with the frames they stepped."""
        groups = [g for gs in list(self.groups.values()) for g in list(gs)]  # copies: the engine thread may change them
        return {"max_batch": self.max_batch, "groups": len(groups),
                "slots": sum(g.capacity for g in groups), "members": sum(g.capacity - g.members.count(None) for g in groups),
                "batched_calls": self.calls, "batched_frames": self.frames}


def _one_run(items: Iterable[Chunk]) -> bool:
    """The chunks make one run (one engine step, as the sequencer steps them)."""
    items = list(items)
    return all(follows(a, b) for a, b in zip(items, items[1:]))


def _rows(arrays: list, index: list[int]) -> list:
    """Copies of rows ``index`` of numpy arrays or torch tensors."""
    rows = [a[index] for a in arrays]  # advanced indexing: copies
    _settle(rows)
    return rows


def _settle(arrays: list) -> None:
    """Wait for torch's copies on a GPU to be done: TensorRT steps on a CUDA stream of its own,
    which nothing orders after torch's."""
    for a in arrays:
        if getattr(a, "is_cuda", False):
            import torch

            torch.cuda.current_stream(a.device).synchronize()
            return
