"""One stream's sequencing, without sockets: seq numbers, gaps, restarts, the lag flush, output headers.

Two halves, one per thread of the service:

- :class:`Inbox` (receive thread) counts ``seq`` jumps as messages arrive (``gaps``,
  ``frames_missing``, ``restarts``: losses upstream) and holds the chunks waiting for the
  engine, at most ``max_queue`` frames: on overflow the **oldest** are dropped (counted as
  ``dropped``), since a closed-loop controller wants the newest frames. A single message
  larger than ``max_queue`` is still accepted whole.
- :meth:`Inbox.take` hands the engine thread at most one piece of frames at a time when
  asked (the service asks for one engine step's worth), so a stream with a huge message
  takes turns with the others instead of stalling them.
- :class:`Sequencer` (engine thread) takes the chunks, steps the engine on each run of
  contiguous chunks (same ``fs`` and ``meta``) as one chunk, so a backlog is worked off in
  big, cheap steps, and yields what to publish: one :class:`Output` per run.

Sequence numbers, as the sequencer sees them: the expected next ``seq`` is the previous
``seq + n``. A jump forward is a gap (lost upstream *or* dropped on overflow), a jump back
(or a repeat) a restarted acquisition; either way the outputs still owed for frames
before it (a lag-``k`` model owes ``k``) are flushed by :meth:`Engine.flush
<rtdenoise.backends.base.Engine.flush>`, exactly as offline :func:`rtdenoise.denoise.denoise`
ends a recording, and the context is reset. So every input frame gets exactly one output
frame, whatever happens, and ``frames_in == frames_out + dropped + discarded + queue_depth
+ in_flight``.

Output headers (``denoised/<stream>``), beyond the wire's rules:

- ``seq``, ``n``, ``t_ns`` describe the output frames: with lag ``k`` the output for input
  frame ``s`` carries ``seq = s`` and frame ``s``'s own ``t_ns`` (per-frame times come
  from the input's ``fs``; without ``fs`` the frames of a chunk share its ``t_ns``).
- ``gap``: input frames missing before this message's first frame as the sequencer saw
  them (lost upstream *or* dropped on overflow).
- ``warm``: every frame of the message was computed with a full receptive field
  (for ``n = 1`` this is ``engine.warm(state)``).
- ``epoch``: the service's, drawn at each start: a change means the service restarted.
- ``t_recv_ns``: arrival of the oldest input message the output was computed with (for a
  flush: of what caused it); ``fs``/``meta``: from the latest input message. The
  publisher adds ``t_pub_ns`` just before the send.

Examples
--------
A lag-5 model: outputs leave 5 frames late; a jump in ``seq`` flushes the 5 owed first.

>>> import numpy as np
>>> from rtdenoise.backends import load_engine
>>> seq = Sequencer(load_engine("spectral-lag5"), "rig1")
>>> x = np.full((8, 152), 100.0, "<f4")                      # 8 spectra, (n, bins)
>>> def show(outputs):
...     return [(o.header["seq"], len(o.frames), o.header["gap"]) for o in outputs]
>>> show(seq.feed([Chunk({"seq": 0, "n": 8, "t_ns": 0}, x, t_recv_ns=0)]))
[(0, 3, 0)]
>>> show(seq.feed([Chunk({"seq": 20, "n": 8, "t_ns": 0}, x, t_recv_ns=0)]))  # seq 8..19 lost
[(3, 5, 0), (20, 3, 12)]
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

__all__ = ["MAX_STEP", "Chunk", "Inbox", "Output", "Refused", "Sequencer", "Step", "follows"]

MAX_STEP = 1024  # most frames per engine step (a backlog or a huge message is stepped in pieces, as offline)


class Chunk:
    """One received message of frames, decoded and admitted, waiting for the engine."""

    __slots__ = ("seq", "n", "frames", "t_ns", "fs", "meta", "t_recv_ns", "first")

    def __init__(self, header: dict, frames: np.ndarray, t_recv_ns: int):
        self.seq, self.n, self.t_ns = header["seq"], header["n"], header["t_ns"]
        self.fs, self.meta = header.get("fs"), header.get("meta")
        self.frames, self.t_recv_ns = frames, t_recv_ns  # frames: (n, *shape), checked on arrival
        self.first = 0  # index of frames[0] in the message it came in (a split chunk's rest: > 0)

    def frame_times(self) -> list[int]:
        """t_ns of each frame: from ``fs`` when given, else the message's t_ns for all."""
        if not self.fs:
            return [self.t_ns] * self.n
        return [self.t_ns + round(j * 1e9 / self.fs) for j in range(self.first, self.first + self.n)]

    def split(self, k: int) -> tuple[Chunk, Chunk]:
        """The first ``k`` frames and the rest, as two chunks of the same message."""
        head, rest = object.__new__(Chunk), object.__new__(Chunk)
        for c, lo, hi in ((head, 0, k), (rest, k, self.n)):
            c.seq, c.n, c.t_ns, c.fs, c.meta = self.seq + lo, hi - lo, self.t_ns, self.fs, self.meta
            c.frames, c.t_recv_ns, c.first = self.frames[lo:hi], self.t_recv_ns, self.first + lo
        return head, rest


def follows(prev: Chunk, c: Chunk) -> bool:
    """``c`` continues ``prev``: the next ``seq``, the same ``fs`` and ``meta`` (one run: one engine step)."""
    return c.seq == prev.seq + prev.n and c.fs == prev.fs and c.meta == prev.meta


class Inbox:
    """One stream's receive side: ``seq`` jumps counted on arrival, and the bounded queue."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.queue: collections.deque[Chunk] = collections.deque()
        self.queued = 0  # frames in queue
        self.next_seq: int | None = None  # seq expected next on arrival
        self.frames_in = self.messages_in = 0
        self.gaps = self.frames_missing = self.restarts = 0
        self.dropped = 0

    def put(self, chunk: Chunk) -> None:
        """Count ``chunk``'s arrival and queue it, dropping the oldest chunks on overflow."""
        seq, n = chunk.seq, chunk.n
        if self.next_seq is not None and seq != self.next_seq:
            if seq > self.next_seq:
                self.gaps += 1
                self.frames_missing += seq - self.next_seq
            else:
                self.restarts += 1
        self.next_seq = seq + n
        self.frames_in += n
        self.messages_in += 1
        while self.queue and self.queued + n > self.max_queue:  # a controller wants the newest frames
            old = self.queue.popleft()
            self.queued -= old.n
            self.dropped += old.n
        self.queue.append(chunk)
        self.queued += n

    def take(self, limit: int | None = None) -> collections.deque[Chunk]:
        """The chunks waiting, oldest first: all of them, or the first ``limit`` frames (a
        chunk is split where the limit falls; its rest stays first in the queue)."""
        if limit is None or self.queued <= limit:
            items, self.queue, self.queued = self.queue, collections.deque(), 0
            return items
        items: collections.deque[Chunk] = collections.deque()
        left = limit
        while left > 0:
            c = self.queue[0]
            if c.n > left:
                c, self.queue[0] = c.split(left)
            else:
                self.queue.popleft()
            items.append(c)
            left -= c.n
            self.queued -= c.n
        return items


@dataclass
class Output:
    """One ``denoised/<stream>`` message to publish."""

    header: dict  # the output header, all but t_pub_ns (set just before the send)
    frames: np.ndarray  # (m, *frame) C-contiguous "<f4"
    chunks: list[Chunk] | None  # the messages whose arrival produced it (None: a flush), for latencies
    engine_ns: int  # the engine time it took


@dataclass
class Step:
    """Frames of one run of chunks, ready for the engine (:meth:`Sequencer.begin`)."""

    run: list[Chunk]
    x: np.ndarray  # (n, *frame), the run's frames in order
    times: list[int]  # t_ns of each frame
    seen: int  # frames the stream's state had seen since its reset, before these


@dataclass
class Refused:
    """Frames that get no output: counted as discarded, with the reason.

    ``bad_frames``: the engine refused a run of ``n`` frames (ValueError/TypeError), nothing
    was stepped. ``non_finite_output``: the stream's state went non-finite; the ``n`` frames
    whose outputs were not yet published are dropped, the state is reset and the next
    output's ``gap`` counts them (also for a flush whose outputs went non-finite).
    ``time_range``: the frame times of a run overflow (nothing was stepped).
    ``internal_error``: the engine failed on a run (not a refusal: the state may have
    changed); as for ``non_finite_output``, the run and what was owed are dropped, the state reset.
    """

    n: int
    message: str
    reason: str = "bad_frames"
    error: BaseException | None = None  # internal_error: what the engine raised, for the log's traceback


class Sequencer:
    """One stream's engine side: steps the engine on chunks and says what to publish.

    Parameters
    ----------
    engine : Engine
        Shared by every stream; the stream's own state is made on first use (by the
        thread that steps it).
    stream : str
        The stream's name, for the output headers.
    first_seq : int, optional
        ``seq`` of the stream's first message, so frames dropped before the first step
        show as a gap.
    max_step : int
        Most frames per engine step.

    epoch : int
        The service's epoch, carried by every output header (a new one at each start).
    checked : bool
        The chunks were validated already: in the service :func:`rtdenoise.stream.admission.admit`
        ran :meth:`Engine.check_frames` on each as it arrived, so it steps with
        ``checked=True``. False (the default, for use on its own) validates every run.
    """

    def __init__(self, engine: Any, stream: str, *, first_seq: int | None = None, max_step: int = MAX_STEP,
                 checked: bool = False, epoch: int = 0):
        self.engine, self.stream, self.lag, self.max_step = engine, stream, int(engine.lag), max_step
        self.epoch = epoch
        self.checked = checked
        self.state = None  # engine StreamState, made on first use
        self.next_seq = first_seq  # seq expected next (None: any, after a reset)
        self.fresh = True  # no frame stepped since the last reset
        self.out_seq = 0  # seq of the next output frame
        self.out_index = 0  # output frames since the last reset
        self.pending_t: collections.deque[int] = collections.deque()  # t_ns of frames owed an output
        self.last_fs = self.last_meta = None
        self.pending_gap = 0
        self.warm = False
        self.resets = 0
        self.frame_ns: collections.deque[float] = collections.deque(maxlen=16)  # engine ns per frame, its own last steps
        self.group = self.slot = None  # the group state this stream's state is a slot of (rtdenoise.stream.batch)

    @property
    def in_flight(self) -> int:
        """Frames stepped whose output is still owed (at most ``lag``)."""
        return len(self.pending_t)

    def _ensure_state(self) -> None:
        if self.state is None:
            self.state = self.engine.new_state(1)

    def reset(self, t_recv: int) -> Output | Refused | None:
        """A reset request: flush what is owed (returned, if anything), then a fresh context.
        ``t_recv``: when the request arrived."""
        out = self.end(t_recv)
        self.resets += 1
        return out

    def end(self, t_recv: int) -> Output | Refused | None:
        """The end of the stream (it went idle): the outputs owed, if any; then a fresh context."""
        self._ensure_state()
        return self._restart(t_recv)

    def feed(self, chunks: Iterable[Chunk]) -> Iterator[Output | Refused]:
        """Step the engine on ``chunks`` (oldest first) and yield what to publish, as soon as
        it is computed: a flush before a gap or restart, then one output per run of
        contiguous chunks (none while the first ``lag`` frames of a context wait for their
        future); a :class:`Refused` for a run the engine refused."""
        self._ensure_state()
        run: list[Chunk] = []
        for c in chunks:
            if run and not follows(run[-1], c):
                yield from self._run(run)
                run = []
            run.append(c)
        if run:
            yield from self._run(run)

    def _restart(self, t_recv: int) -> Output | Refused | None:
        """Flush the outputs owed for the frames so far, then forget them (a fresh context).

        ``t_recv``: arrival of what caused it (the message after a gap, or the command)."""
        t0 = time.perf_counter_ns()
        y = self.engine.flush(self.state)  # (owed, *frame); the state is reset
        t1 = time.perf_counter_ns()
        owed = min(len(y), len(self.pending_t))
        out = None
        if owed and np.isfinite(y[len(y) - owed:]).all():
            out = self._output(y[len(y) - owed:], None, t1 - t0, meta=self.last_meta, fs=self.last_fs, t_recv=t_recv)
        elif owed:  # never published (the state is reset by the flush): the next output's gap counts them
            self.pending_gap += owed
            out = Refused(owed, f"the flush of {owed} owed frames went non-finite; dropped", "non_finite_output")
        self.pending_t.clear()
        self.out_index = 0
        self.next_seq, self.fresh = None, True
        self.warm = False
        return out

    def _run(self, run: list[Chunk]) -> Iterator[Output | Refused]:
        """Step the engine on contiguous chunks as one chunk; yield the flush before it, if
        any, and its outputs."""
        before, step = self.begin(run)
        yield from before
        if step is not None:
            yield from self.advance(step)

    def advance(self, step: Step) -> Iterator[Output | Refused]:
        """Step the engine on :meth:`begin`'s frames, this stream alone, and :meth:`finish`."""
        x, n = step.x, step.x.shape[0]
        most = min(self.max_step, self.engine.max_step(x.shape[1:]))  # bounded memory for any frame size
        t0 = time.perf_counter_ns()
        try:
            if n <= most:
                y = self.engine.step(x, self.state, checked=self.checked)
            else:  # bounded memory whatever the backlog or the message size
                if not self.checked:
                    self.engine.check_frames(x)
                y = np.concatenate([self.engine.step(x[i:i + most], self.state, checked=True) for i in range(0, n, most)])
        except (ValueError, TypeError) as e:  # the engine refused the chunk
            yield self.refuse(step, e)
            return
        except Exception as e:  # noqa: BLE001 - the engine failed (a GPU error, a bug): counted, the stream goes on
            yield self.fail(step, e)
            return
        took = time.perf_counter_ns() - t0
        if step.seen:  # a fresh context's first step (buffers, bindings, a CUDA graph) says nothing of the next ones
            self.frame_ns.append(took / n)
        yield from self.finish(step, y, took)

    def begin(self, run: list[Chunk]) -> tuple[list[Output | Refused], Step | None]:
        """The first half of stepping a run of contiguous chunks, for a caller that steps the
        engine itself (:mod:`rtdenoise.stream.batch` steps several streams in one call): the
        outputs to publish first (a flush before a gap or restart; a :class:`Refused` if the
        frame times overflow), and the frames to step, or None. Step them on :attr:`state`
        (or on a state it is a slot of), then :meth:`finish` with the outputs (or
        :meth:`refuse` with what the engine raised)."""
        before: list[Output | Refused] = []
        seq0 = run[0].seq
        if self.next_seq is not None and seq0 != self.next_seq:
            jump = seq0 - self.next_seq  # > 0: frames missing (lost upstream or dropped on overflow)
            out = self._restart(run[0].t_recv_ns)
            if out is not None:
                before.append(out)
            self.pending_gap += max(0, jump)
        if self.fresh:  # the first frame of a context: outputs start here
            self.out_seq, self.fresh = seq0, False
        x = run[0].frames if len(run) == 1 else np.concatenate([c.frames for c in run])
        n = x.shape[0]
        try:  # before the engine sees a frame: a failure here loses nothing and shifts no seq
            times = [t for c in run for t in c.frame_times()]
        except (OverflowError, ValueError) as e:
            before.append(Refused(n, f"seq {seq0}..{seq0 + n - 1}: frame times from t_ns and fs: {e}", "time_range"))
            return before, None
        return before, Step(run, x, times, int(self.state.seen[0]))

    def refuse(self, step: Step, error: Exception) -> Refused:
        """The engine refused ``step``'s frames (nothing was stepped)."""
        seq0, n = step.run[0].seq, step.x.shape[0]
        return Refused(n, f"seq {seq0}..{seq0 + n - 1}: {error}")

    def fail(self, step: Step, error: Exception) -> Refused:
        """The engine failed on ``step``'s frames after it may have changed the state (not a
        refusal): they and the outputs owed are dropped, and the stream starts afresh after them."""
        seq0, n = step.run[0].seq, step.x.shape[0]
        out = self._drop(step, f"seq {seq0}..{seq0 + n - 1}: the engine failed ({type(error).__name__}: {error})",
                         "internal_error")
        out.error = error
        return out

    def _drop(self, step: Step, why: str, reason: str) -> Refused:
        """``step`` was stepped, but nothing owed will be published: reset, and the next output's gap counts it."""
        self.next_seq = step.run[0].seq + step.x.shape[0]
        self.last_fs, self.last_meta = step.run[-1].fs, step.run[-1].meta
        lost = len(self.pending_t) + len(step.times)
        self.engine.reset(self.state)
        self.pending_t.clear()
        self.out_index, self.fresh, self.warm = 0, True, False
        self.pending_gap += lost
        return Refused(lost, f"{why}; the stream was reset and the {lost} frames owed an output dropped", reason)

    def finish(self, step: Step, y: np.ndarray, engine_ns: int) -> Iterator[Output | Refused]:
        """The second half: ``y`` (n, *frame), the engine's outputs for ``step``'s frames, which
        took ``engine_ns``; yields its output, if any (or a :class:`Refused` if it went non-finite)."""
        run, n, seq0 = step.run, step.x.shape[0], step.run[0].seq
        if not np.isfinite(y).all():  # never published: drop what is owed, start afresh after it
            yield self._drop(step, f"seq {seq0}..{seq0 + n - 1}: the model's output went non-finite", "non_finite_output")
            return
        self.next_seq = seq0 + n
        self.last_fs, self.last_meta = run[-1].fs, run[-1].meta
        self.pending_t.extend(step.times)
        owed_before = max(0, self.lag - step.seen)  # outputs that belong to frames before the reset
        valid = max(0, n - owed_before)
        if valid:
            yield self._output(y[n - valid:], run, engine_ns, meta=run[-1].meta, fs=run[-1].fs)
        else:
            self.warm = bool(self.engine.warm(self.state)[0])

    def lost(self, n: int) -> None:
        """``n`` output frames made by this sequencer were not published (the send failed):
        the next output's ``gap`` counts them, its ``seq`` is already right."""
        self.pending_gap += n

    def _output(self, y: np.ndarray, run: list[Chunk] | None, engine_ns: int, *, meta, fs,
                t_recv: int | None = None) -> Output:
        """The message for outputs ``y`` (m, *frame) of the next m owed frames."""
        m = y.shape[0]
        times = [self.pending_t.popleft() for _ in range(m)]
        self.warm = bool(self.engine.warm(self.state)[0])
        # The header's warm speaks for every frame of the message: its first output frame
        # (index out_index since the reset) had seen out_index + lag + 1 inputs.
        warm = self.out_index + self.lag + 1 >= self.engine.receptive_field + self.lag
        if run:
            t_recv = min(c.t_recv_ns for c in run)  # the oldest: latency of the worst frame
        header = {"stream": self.stream, "seq": self.out_seq, "t_ns": times[0], "t_recv_ns": t_recv,
                  "lag": self.lag, "model": self.engine.name, "gap": self.pending_gap, "warm": bool(warm),
                  "epoch": self.epoch}
        if fs is not None:
            header["fs"] = fs
        if meta is not None:
            header["meta"] = meta
        self.out_seq += m
        self.out_index += m
        self.pending_gap = 0
        return Output(header, np.ascontiguousarray(y, dtype="<f4"), run, engine_ns)
