"""Measure a live service from outside: open-loop paced publishing, latency per frame.

Frames are published on a fixed schedule (frame i of every stream is due at
``t0 + i / rate``) whatever happens downstream, and each output's latency is measured
from the moment its frame was *due*, not from when it was actually sent: a stall
anywhere (publisher, network, queue, engine, subscriber) shows up in the numbers rather
than slowing the load (no coordinated omission). Used by ``rtdenoise demo``,
``rtdenoise bench latency`` and ``benchmarks/bench_latency.py``.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from rtdenoise.metrics import percentiles


@dataclass
class LoadResult:
    """Outputs and latencies of one paced run; latencies in ms, NaN where no output came."""

    streams: list[str]
    rate: float
    frames_in: int  # frames published, all streams
    outputs: dict[str, np.ndarray | None]  # per stream (T, *shape), NaN where nothing arrived; None: not kept
    e2e_ms: dict[str, np.ndarray]  # due time of the frame that released the output → arrival
    stage_ms: dict[str, dict[str, np.ndarray]]  # "in", "service", "out" per stream
    late_sends: int = 0  # sends more than one period behind schedule (publisher overloaded)
    lag: int = 0
    headers: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def frames_out(self) -> int:
        return int(sum((~np.isnan(e)).sum() for e in self.e2e_ms.values()))  # every output frame has its latency

    @property
    def frames_lost(self) -> int:
        """Frames that should have come out but did not (the last ``lag`` are still in flight)."""
        return self.frames_in - self.frames_out - self.lag * len(self.streams)

    def latency_summary(self) -> dict:
        e = np.concatenate([v[~np.isnan(v)] for v in self.e2e_ms.values()])
        out = percentiles(e, (50, 90, 99, 99.9), empty=float("nan"))  # printed as nan when nothing came back
        out["stages_p50"] = {
            k: float(np.nanmedian(np.concatenate([s[k] for s in self.stage_ms.values()]))) for k in ("in", "service", "out")
        }
        out["stages_p99"] = {
            k: float(np.nanpercentile(np.concatenate([s[k] for s in self.stage_ms.values()]), 99)) for k in ("in", "service", "out")
        }
        return out


def paced_load(
    pub_address: str,
    sub_address: str,
    recordings: dict[str, np.ndarray],
    *,
    rate: float,
    bind_pub: bool = False,
    lag: int | None = None,
    fs: float | None = None,
    connect_timeout: float = 10.0,
    drain_s: float = 2.0,
    progress=None,
    curve_keys=None,
    frames: int | None = None,
    keep_outputs: bool = True,
) -> LoadResult:
    """Publish ``recordings`` (stream name -> (T, W) frames) at ``rate`` frames/s per stream.

    ``pub_address`` is where frames go (the service's input; bind with ``bind_pub``),
    ``sub_address`` where denoised frames come from (the service's output). ``lag`` is
    the service model's lookahead: the output for frame s leaves with frame s + lag, so
    its latency is measured from that frame's due time (default: the ``lag`` the service's
    answer to the probe says, else 0). ``progress(received, outputs,
    e2e_ms)`` is called after each output message.

    Before the load starts, probe frames on the stream ``<first stream>.probe`` go round
    until one comes back denoised, so no connection is still being set up when the first
    frame is due (ZeroMQ's slow joiner); a service that never answers raises
    ``TimeoutError`` after ``connect_timeout`` seconds.

    ``curve_keys``: ``(client_secret_key_file, server_public_key_file)`` for a service run
    with CURVE; both sockets are then its CURVE clients.

    ``frames``: frames per stream to publish (default: the shortest recording's length);
    beyond a recording's end it starts again from its first frame, with ``seq`` going on (a
    long run from a short movie). ``keep_outputs=False`` keeps only the latencies (a long
    run of large frames would not fit in memory); ``outputs`` is then None per stream, also
    in what ``progress`` is given.
    """
    import zmq

    from rtdenoise import security
    from rtdenoise.stream import wire
    from rtdenoise.stream.client import Subscriber

    keys = security.client_keys(curve_keys)
    if rate <= 0:
        raise ValueError(f"rate must be > 0 frames/s, got {rate}")
    names = list(recordings)
    empty = [s for s, r in recordings.items() if len(r) == 0]
    if empty:
        raise ValueError(f"recording(s) {empty} hold no frames")
    n = min(len(r) for r in recordings.values()) if frames is None else int(frames)
    if n < 1:
        raise ValueError(f"frames must be >= 1, got {n}")
    period_ns = 1e9 / rate
    outputs = {s: np.full((n, *recordings[s].shape[1:]), np.nan, dtype=np.float32) if keep_outputs else None
               for s in names}
    e2e = {s: np.full(n, np.nan) for s in names}
    stages = {s: {k: np.full(n, np.nan) for k in ("in", "service", "out")} for s in names}
    late = [0]
    sent = [0]
    # One PUB socket carries every stream, as one acquisition program would.
    pub = zmq.Context.instance().socket(zmq.PUB)
    quit_ = threading.Event()  # stops the publisher thread if receiving fails
    th = None
    probe = f"{names[0]}.probe"
    try:
        pub.setsockopt(zmq.SNDHWM, 100_000)
        security.apply_client(pub, keys)
        with Subscriber(sub_address, streams=names + [probe], curve_keys=keys) as sub:
            pub.bind(pub_address) if bind_pub else pub.connect(pub_address)
            answer = _round_trip(pub, sub, probe, recordings[names[0]][:1], connect_timeout, pub_address, sub_address)
            if lag is None:
                lag = int(answer.get("lag", 0))
            t0 = time.time_ns() + 20_000_000

            def publish() -> None:
                for i in range(n):
                    if quit_.is_set():
                        return
                    due = t0 + int(i * period_ns)
                    wait = (due - time.time_ns()) / 1e9
                    # Sleep, never spin: a spinning thread holds the GIL and starves the
                    # receiving loop. Oversleeping shows up in the `in` stage, not hidden.
                    if wait > 0:
                        time.sleep(wait)
                    elif -wait * 1e9 > period_ns:
                        late[0] += 1
                    for s in names:
                        j = i % len(recordings[s])
                        pub.send_multipart(wire.encode_frames(s, recordings[s][j : j + 1], seq=i, t_ns=due, fs=fs))
                        sent[0] += 1

            th = threading.Thread(target=publish, name="rtdenoise-paced-publisher", daemon=True)
            th.start()
            expected = (n - lag) * len(names)
            got, quiet_until = 0, None
            while got < expected:
                try:
                    header, frames = sub.recv(timeout=0.1)
                except TimeoutError:
                    if not th.is_alive():
                        quiet_until = quiet_until or time.monotonic() + drain_s
                        if time.monotonic() > quiet_until:
                            break
                    continue
                t_arr = time.time_ns()
                s, seq, k = header["stream"], header["seq"], header["n"]
                if s not in outputs or seq + k > n:  # a late probe answer
                    continue
                if keep_outputs:
                    outputs[s][seq : seq + k] = frames
                for j in range(k):
                    due = t0 + int((seq + j + lag) * period_ns)
                    e2e[s][seq + j] = (t_arr - due) / 1e6
                due0 = t0 + int((seq + lag) * period_ns)
                stages[s]["in"][seq] = (header["t_recv_ns"] - due0) / 1e6
                stages[s]["service"][seq] = (header["t_pub_ns"] - header["t_recv_ns"]) / 1e6
                stages[s]["out"][seq] = (t_arr - header["t_pub_ns"]) / 1e6
                got += k
                if progress is not None:
                    progress(got, outputs, e2e)
    finally:
        quit_.set()
        if th is not None:
            th.join(5.0)  # before closing: the thread sends on this socket
        pub.close(linger=0)
    return LoadResult(names, rate, sent[0], outputs, e2e, stages, late[0], lag)


def _round_trip(pub, sub, probe: str, frame: np.ndarray, timeout: float, pub_address: str, sub_address: str) -> dict:
    """Send ``frame`` on ``probe`` until its denoised answer comes back; return that answer's header."""
    from rtdenoise.stream import wire

    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        pub.send_multipart(wire.encode_frames(probe, frame, seq=seq, t_ns=time.time_ns()))
        seq += 1
        try:
            while True:
                header, _ = sub.recv(timeout=0.05)
                if header["stream"] == probe:
                    return header
        except TimeoutError:
            continue
    raise TimeoutError(
        f"no denoised probe frame came back within {timeout:g} s: is the service running, taking frames "
        f"from {pub_address} and publishing on {sub_address}?"
    )


def bench_latency(pub: str, sub: str, *, rate: float, seconds: float, streams: int = 1, input=None,
                  **kwargs) -> dict:
    """``rtdenoise bench latency``: :func:`paced_load` of ``streams`` copies of a recording.

    ``input``: a recording file to publish (default: synthetic 152-bin spectra), tiled to
    ``rate × seconds`` frames. The streams are ``bench0.<run>``, ``bench1.<run>``, … with a
    fresh ``run`` each call: a service still holds the last run's streams (their frame shape,
    the frames a lookahead model owes them), which a new run on the same names would
    inherit. ``kwargs`` go to :func:`paced_load`. Returns frames in, out,
    lost, late sends and the latency summary (ms).
    """
    if streams < 1:
        raise ValueError(f"--streams must be >= 1, got {streams}")
    n = max(1, int(rate * seconds))
    if input:
        from rtdenoise.io import load_frames

        base = load_frames(input)
    else:
        from rtdenoise.synth import simulate

        base = simulate(min(n, 3000), seed=0, photons=2000)["noisy"]
    frames = np.tile(base, (-(-n // len(base)),) + (1,) * (base.ndim - 1))[:n]
    run = secrets.token_hex(3)
    res = paced_load(pub, sub, {f"bench{i}.{run}": frames for i in range(streams)}, rate=rate, **kwargs)
    return {"frames_in": res.frames_in, "frames_out": res.frames_out, "frames_lost": res.frames_lost,
            "late_sends": res.late_sends, "latency_ms": res.latency_summary()}
