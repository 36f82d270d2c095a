"""End-to-end latency of the live service on loopback TCP, open loop.

    python benchmarks/bench_latency.py [--seconds 10] [--soak-minutes 10]

Runs ``rtdenoise serve`` as its own process with the default model and measures it from
outside with :func:`rtdenoise.bench.paced_load` (latency from each frame's *due* time, so
no coordinated omission):

1. the floor: a bare ZeroMQ echo (SUB → PUB, no engine) at 100 Hz, and the engine's own
   1-frame step in-process;
2. one stream at rates from the instrument's 5 Hz up to saturation;
3. 1, 4 and 16 concurrent streams at 50 Hz;
4. a soak: one stream at 100 Hz for ``--soak-minutes``.

Writes ``benchmarks/results/latency.{json,md}`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine  # noqa: E402

from rtdenoise.bench import paced_load  # noqa: E402
from rtdenoise.metrics import percentiles  # noqa: E402
from rtdenoise.synth import simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames_for(n: int, seed: int) -> np.ndarray:
    """A 5 Hz recording replayed at any rate: what the model expects, frame for frame."""
    base = simulate(min(n, 3000), seed=seed, photons=2000)["noisy"]
    reps = -(-n // len(base))
    return np.tile(base, (reps, 1))[:n]  # tiling restarts the dynamics; a new seq is not a restart


def echo_server(sub_addr: str, pub_addr: str, stop: threading.Event) -> None:
    """The transport floor: republish every frame as 'denoised' with no engine."""
    import zmq

    from rtdenoise.stream import wire

    ctx = zmq.Context.instance()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(sub_addr)
    pub.bind(pub_addr)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(50):
            continue
        parts = sub.recv_multipart(copy=False)
        t_recv = time.time_ns()
        _, h, frames = wire.decode(parts)
        out = {k: h[k] for k in ("v", "stream", "seq", "n", "shape", "t_ns") if k in h}
        out.update(dtype="<f4", t_recv_ns=t_recv, lag=0, model="echo", gap=0, warm=True, epoch=0)
        out["t_pub_ns"] = time.time_ns()
        pub.send_multipart(wire.encode_denoised(out, frames.astype("<f4")))
    sub.close(linger=0)
    pub.close(linger=0)


def engine_step_ms(steps: int = 2000) -> dict:
    from rtdenoise.backends import load_engine

    eng = load_engine(None, backend="auto")  # what `rtdenoise serve` runs by default
    st = eng.new_state(1)
    x = frames_for(steps + 200, 3)
    times = []
    for i in range(len(x)):
        t = time.perf_counter()
        eng.step(x[i : i + 1], st)
        times.append((time.perf_counter() - t) * 1e3)
    return percentiles(times[200:], (50, 90, 99, 99.9))


class ServeProcess:
    def __init__(self, *extra: str):
        self.sub = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"ipc://{tempfile.mkdtemp(prefix='rtd-lat-')}/control"
        cmd = [sys.executable, "-m", "rtdenoise.cli", "serve", "--bind-sub", "--sub", self.sub, "--pub", self.pub,
               "--control", self.control, "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()  # the service prints one line when ready
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve failed to start: {line}{self.proc.stdout.read()}")

    def stop(self) -> None:
        from rtdenoise.stream.service import control

        try:
            control(self.control, "stop", timeout=5.0)
        except Exception:  # noqa: BLE001 - a dead service is stopped already
            self.proc.terminate()
        self.proc.wait(10)


def run(pub: str, sub: str, streams: int, rate: float, seconds: float, lag: int = 0) -> dict:
    n = max(10, int(rate * seconds))
    recs = {f"s{i}": frames_for(n, 100 + i) for i in range(streams)}
    res = paced_load(pub, sub, recs, rate=rate, lag=lag, fs=5.0)
    s = res.latency_summary()
    return {"streams": streams, "rate_hz": rate, "seconds": seconds, "frames_in": res.frames_in,
            "frames_out": res.frames_out, "frames_lost": res.frames_lost, "late_sends": res.late_sends, **s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="per rate step")
    ap.add_argument("--rates", default="5,100,500,1000,2000,4000", help="one-stream rates, Hz")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    args = ap.parse_args(argv)
    res: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "command": "python benchmarks/bench_latency.py " + " ".join(argv or sys.argv[1:])}

    stop = threading.Event()
    e_sub, e_pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    th = threading.Thread(target=echo_server, args=(e_sub, e_pub, stop), daemon=True)
    th.start()
    time.sleep(0.2)
    res["zmq_echo_100hz"] = run(e_sub, e_pub, 1, 100.0, args.seconds)
    stop.set()
    th.join()
    res["engine_step_ms"] = engine_step_ms()
    print("floor:", json.dumps(res["zmq_echo_100hz"]), json.dumps(res["engine_step_ms"]), file=sys.stderr)

    srv = ServeProcess()
    try:
        res["one_stream"] = []
        for rate in [float(r) for r in args.rates.split(",")]:
            r = run(srv.sub, srv.pub, 1, rate, args.seconds)
            res["one_stream"].append(r)
            print("rate", rate, json.dumps(r), file=sys.stderr)
        res["streams_50hz"] = []
        for k in (1, 4, 16):
            r = run(srv.sub, srv.pub, k, 50.0, args.seconds)
            res["streams_50hz"].append(r)
            print("streams", k, json.dumps(r), file=sys.stderr)
        if args.soak_minutes > 0:
            res["soak_100hz"] = run(srv.sub, srv.pub, 1, 100.0, args.soak_minutes * 60)
            print("soak", json.dumps(res["soak_100hz"]), file=sys.stderr)
    finally:
        srv.stop()

    floor = res["zmq_echo_100hz"]["p99"] + res["engine_step_ms"]["p99"]
    at100 = next((r for r in res["one_stream"] if r["rate_hz"] == 100.0), None)
    res["ratio_p99_100hz"] = at100["p99"] / floor if at100 else None
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "latency.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    row = lambda name, r: (  # noqa: E731
        f"| {name} | {r['frames_in']} | {r['frames_out']} | {r['frames_lost']} | {r['p50']:.3f} | {r['p90']:.3f} | "
        f"{r['p99']:.3f} | {r['p999']:.3f} | {r['max']:.3f} | "
        + " / ".join(f"{r['stages_p50'][k]:.3f}" for k in ("in", "service", "out")) + " |"
    )
    head = ("| run | frames in | out | lost | p50 ms | p90 | p99 | p99.9 | max | p50 stages in / service / out |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    e = res["engine_step_ms"]
    lines = [
        "# Live-service latency (loopback TCP, default model, open-loop paced publisher)",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        "Latency runs from each frame's due time to the subscriber's receipt. Stages: `in` = due →",
        "service receive (publisher scheduling + transport in), `service` = receive → publish (queue +",
        "engine + encode), `out` = publish → subscriber.",
        "",
        "## Floor",
        "",
        head,
        row("bare ZeroMQ echo, 100 Hz", res["zmq_echo_100hz"]),
        "",
        f"Engine 1-frame step in-process (backend auto, as the service): p50 {e['p50']:.3f} ms, p99 {e['p99']:.3f} ms, max {e['max']:.3f} ms.",
        "",
        "## One stream, rising rate",
        "",
        head,
    ]
    lines += [row(f"{r['rate_hz']:g} Hz", r) for r in res["one_stream"]]
    lines += ["", "## Concurrent streams at 50 Hz", "", head]
    lines += [row(f"{r['streams']} streams", r) for r in res["streams_50hz"]]
    if "soak_100hz" in res:
        lines += ["", "## Soak", "", head, row(f"100 Hz for {res['soak_100hz']['seconds'] / 60:g} min", res["soak_100hz"])]
    if res.get("ratio_p99_100hz"):
        lines += ["", f"End-to-end p99 at 100 Hz ÷ (bare ZeroMQ p99 + engine step p99) = {res['ratio_p99_100hz']:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
