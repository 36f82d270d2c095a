"""Many streams in one service: stepped together in one engine call (``--max-batch 16``) or one by one (1).

    python benchmarks/bench_batch.py [--streams 16] [--seconds 10] [--backend auto] [--size 128 --size 512]

The service runs as its own process (``rtdenoise serve``); this process publishes every
stream's frames on one PUB socket (uint16, one message per frame) and subscribes to the
outputs. Per case (a shipped model and a frame size), for ``--max-batch`` 16 and 1:

- **throughput**: rounds of one frame per stream, as fast as the service answers, with at
  most ``--window`` rounds in flight (closed loop: a round is sent when the round
  ``window`` before it has come back), for ``--seconds``. Frames/s is every stream's
  frames over the time; nothing can be lost (the queues never fill).
- **live**: the streams at ``--rate`` Hz on one clock (rigs triggered together), open loop
  for ``--seconds``: frames lost, latency from send to receipt (p50/p99).

Writes ``benchmarks/results/batch.{json,md}`` (``--out``) with the machine and the card.
The target (#11): 16 streams of 128 × 128 at 30 Hz in one service, nothing lost, and
batched stepping ≥ 3× the frames/s of stepping streams one by one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import run_info, write_results  # noqa: E402

from rtdenoise.demo import ServiceProcess  # noqa: E402
from rtdenoise.stream import Subscriber, control, wire  # noqa: E402

RESULTS = HERE / "results"
MODELS = ("imaging-lag0", "spectral-lag0")


class Streams:
    """``n`` streams published on one PUB socket, their outputs on one Subscriber."""

    def __init__(self, svc: ServiceProcess, n: int, shape: tuple[int, ...], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.names = [f"rig{k:02d}" for k in range(n)]
        self.frames = rng.poisson(rng.uniform(5, 50, (n, 1, *shape)), (n, 64, *shape)).astype(np.uint16)
        ctx = zmq.Context.instance()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.connect(svc.addresses["sub"])
        self.sub = Subscriber(svc.addresses["pub"])
        self.seq = 0
        self.sent: dict[int, int] = {}  # seq -> send time (ns)
        self.got: dict[int, int] = {}  # seq -> outputs received
        self.lat_ms: list[float] = []
        deadline = time.monotonic() + 30
        while not self.got:  # slow joiner: both connections up once a round comes back
            if time.monotonic() > deadline:
                raise RuntimeError("the service never answered")
            self.send_round()
            self.drain(0.1)

    def send_round(self) -> None:
        s = self.seq
        self.sent[s] = time.perf_counter_ns()
        for k, name in enumerate(self.names):
            self.pub.send_multipart(wire.encode_frames(name, self.frames[k, s % 64][None], seq=s, t_ns=time.time_ns()),
                                    copy=False)
        self.seq += 1

    def drain(self, timeout: float) -> None:
        """Receive outputs until none comes for ``timeout`` s (0: only what is there)."""
        while True:
            try:
                h, _ = self.sub.recv(timeout=timeout)
            except TimeoutError:
                return
            now = time.perf_counter_ns()
            for s in range(h["seq"], h["seq"] + h["n"]):  # a backlog comes back as one message of several frames
                self.got[s] = self.got.get(s, 0) + 1
                if s in self.sent:
                    self.lat_ms.append((now - self.sent[s]) / 1e6)
            timeout = min(timeout, 0.0005) if timeout else 0

    def reset(self) -> None:
        self.sent, self.got, self.lat_ms = {}, {}, []

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close()


def throughput(streams: Streams, seconds: float, window: int) -> dict:
    streams.reset()
    first = streams.seq
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while streams.seq - first >= window and streams.got.get(streams.seq - window, 0) < len(streams.names):
            streams.drain(0.001)
        streams.send_round()
    while streams.got.get(streams.seq - 1, 0) < len(streams.names) and time.perf_counter() - t0 < seconds + 10:
        streams.drain(0.01)
    took = time.perf_counter() - t0
    frames = sum(streams.got.values())
    return {"rounds": streams.seq - first, "frames": frames, "seconds": round(took, 3),
            "frames_per_s": round(frames / took, 1), **_lat(streams.lat_ms)}


def live(streams: Streams, seconds: float, rate: float) -> dict:
    streams.reset()
    first, period = streams.seq, 1.0 / rate
    t0 = time.perf_counter()
    n_rounds = int(seconds * rate)
    for r in range(n_rounds):
        while time.perf_counter() < t0 + r * period:
            streams.drain(0)
        streams.send_round()
    deadline = time.perf_counter() + 5
    while sum(streams.got.values()) < n_rounds * len(streams.names) and time.perf_counter() < deadline:
        streams.drain(0.05)
    sent = n_rounds * len(streams.names)
    got = sum(v for s, v in streams.got.items() if s >= first)
    return {"rate_hz": rate, "frames_sent": sent, "frames_lost": sent - got, **_lat(streams.lat_ms)}


def engine_ms(status: dict) -> float:
    """The service's engine time per output message (one frame each here; a call for several
    streams counts its share), the median over streams of each one's p50."""
    return round(float(np.median([s["stages_ms"]["engine"]["p50"] for s in status["streams"].values()])), 4)


def _lat(ms: list[float]) -> dict:
    if not ms:
        return {"latency_ms": None}
    a = np.asarray(ms)
    return {"latency_ms": {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
                           "max": round(float(a.max()), 2)}}


def run_case(model: str, shape: tuple[int, ...], args) -> dict:
    runs = {}
    for max_batch in (16, 1):
        svc = ServiceProcess(model=model, backend=args.backend, threads=args.threads, spin=False, max_queue=1000,
                             warm_shapes=(shape,),
                             max_batch=max_batch)
        streams = Streams(svc, args.streams, shape)
        try:
            throughput(streams, 1.0, args.window)  # warm-up: graphs, bindings, slots, the batching choice measured
            t = throughput(streams, args.seconds, args.window)
            t["engine_ms"] = engine_ms(control(svc.addresses["control"], "status", timeout=10))
            lv = live(streams, args.seconds, args.rate)
        finally:
            streams.close()
            stats = svc.stop()
        runs[str(max_batch)] = {"throughput": t, "live": lv, "service": stats["batch"], "backend": svc.backend}
        print(f"{model} {shape} max_batch {max_batch}: {t['frames_per_s']:.0f} frames/s; live {args.rate:g} Hz lost "
              f"{lv['frames_lost']}/{lv['frames_sent']}, p99 {(lv['latency_ms'] or {}).get('p99')} ms; {stats['batch']}",
              file=sys.stderr, flush=True)
    gain = runs["16"]["throughput"]["frames_per_s"] / runs["1"]["throughput"]["frames_per_s"]
    engine_gain = runs["1"]["throughput"]["engine_ms"] / runs["16"]["throughput"]["engine_ms"]
    return {"model": model, "shape": list(shape), "streams": args.streams, "runs": runs, "gain": round(gain, 2),
            "engine_gain": round(engine_gain, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=30.0, help="live: frames/s of each stream")
    ap.add_argument("--window", type=int, default=2, help="throughput: rounds in flight at most")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="engine threads")
    ap.add_argument("--case", action="append", choices=MODELS, help="default: all")
    ap.add_argument("--size", type=int, action="append", help="image side(s) for imaging-lag0 (default 128; a GPU: 128 512)")
    ap.add_argument("--out", default=str(RESULTS / "batch"))
    args = ap.parse_args(argv)
    sizes = args.size or [128]
    cases = [(m, s) for m in MODELS if not args.case or m in args.case
             for s in ([(n, n) for n in sizes] if m.startswith("imaging") else [(152,)])]
    res = {**run_info(__file__, argv), "cases": [run_case(m, s, args) for m, s in cases]}
    print(write_results(args.out, res, markdown))
    return 0


def markdown(res: dict) -> str:
    lines = [
        "# Many streams in one service: one engine call for all, or one per stream",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        "The service as its own process (`rtdenoise serve --max-batch 16` or `1`), the shipped model; uint16 frames,",
        "one message per frame per stream, published from one socket. **Throughput**: rounds of one frame per",
        "stream as fast as the service answers (at most 2 rounds in flight: nothing queues, nothing is lost).",
        "**Live**: every stream at the rate on one clock, open loop; latency from send to receipt.",
        "",
        "`engine ms/frame`: the service's engine time per output frame in the throughput run (a call for several",
        "streams counts its share), median over streams of each one's p50; its inverse is what the engine alone could do.",
        "",
        "| model | frame | streams | max batch | backend | frames/s | round p50 ms | engine ms/frame | live Hz | lost | "
        "live p50 ms | live p99 ms | frames stepped together |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        for mb, r in c["runs"].items():
            t, lv, b = r["throughput"], r["live"], r["service"]
            lat = lv["latency_ms"] or {}
            lines.append(f"| {c['model']} | {'×'.join(map(str, c['shape']))} | {c['streams']} | {mb} | {r['backend']} | "
                         f"{t['frames_per_s']:.0f} | {(t['latency_ms'] or {}).get('p50')} | {t['engine_ms']} | {lv['rate_hz']:g} | "
                         f"{lv['frames_lost']} of {lv['frames_sent']} | {lat.get('p50')} | {lat.get('p99')} | "
                         f"{b['batched_frames']} in {b['batched_calls']} calls |")
    lines += ["", "Gain, max batch 16 ÷ 1: " + "; ".join(
        f"{c['model']} {'×'.join(map(str, c['shape']))}: **{c['gain']}×** in frames/s through the service, "
        f"{c['engine_gain']}× in engine time per frame" for c in res["cases"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
