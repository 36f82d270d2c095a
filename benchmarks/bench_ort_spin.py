"""ONNX Runtime's spinning threads at a live frame rate: latency bought with CPU.

    python benchmarks/bench_ort_spin.py [--steps 150]

ONNX Runtime's intra-op threads spin-wait after each run by default. A live stream steps
one frame per period and sleeps between, so every spin is CPU burnt while nothing runs, on
the cores that acquisition software, the sockets and the front end also need. This steps
the shipped imaging model (``imaging-lag0``, onnxruntime, 2 threads, the whole engine step
with its front end) paced at the issue's rates, 512 × 512 at 30 Hz and 128 × 128 at
100 Hz, with spinning on and off, each case in a fresh process (two sessions in one
process spin against each other), and reports the step's wall time (p50, p99) and the
process's CPU time per frame. Writes ``benchmarks/results/ort_spin.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import fresh_process_json, run_info, write_results  # noqa: E402

RESULTS = HERE / "results"
CASES = [(512, 30.0), (128, 100.0)]


def _one(size: int, rate: float, spin: bool, steps: int) -> dict:
    """Runs in a fresh process: the paced steps of one case."""
    import numpy as np

    from rtdenoise.backends import load_engine

    engine = load_engine("imaging-lag0", backend="onnxruntime", threads=2, spin=spin)
    state = engine.new_state()
    frames = np.random.default_rng(0).poisson(5.0, (32, size, size)).astype(np.uint16)
    for i in range(20):  # warm: the state allocated, the binding made
        engine.step(frames[i % 32 : i % 32 + 1], state)
    period = 1.0 / rate
    wall = []
    cpu0, due = time.process_time(), time.perf_counter()
    for i in range(steps):
        due += period
        t = time.perf_counter()
        engine.step(frames[i % 32 : i % 32 + 1], state)
        wall.append(time.perf_counter() - t)
        time.sleep(max(0.0, due - time.perf_counter()))
    cpu = (time.process_time() - cpu0) / steps
    w = np.asarray(wall) * 1e3
    return {"size": size, "rate_hz": rate, "spin": spin, "steps": steps,
            "step_ms": {"p50": float(np.percentile(w, 50)), "p99": float(np.percentile(w, 99))},
            "cpu_ms_per_frame": cpu * 1e3, "period_ms": period * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every case")
    ap.add_argument("--out", default=str(RESULTS / "ort_spin"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # size,rate,spin: run one case, print JSON
    args = ap.parse_args(argv)
    if args.case:
        size, rate, spin = args.case.split(",")
        print(json.dumps(_one(int(size), float(rate), spin == "1", args.steps)))
        return 0
    runs = []
    for _ in range(args.rounds):
        for size, rate in CASES:
            for spin in (True, False):
                r = fresh_process_json(__file__, ["--steps", str(args.steps), "--case", f"{size},{rate},{int(spin)}"])
                runs.append(r)
                print(f"{size}x{size} @ {rate:g} Hz spin={spin}: step p50 {r['step_ms']['p50']:.2f} "
                      f"p99 {r['step_ms']['p99']:.2f} ms, CPU {r['cpu_ms_per_frame']:.2f} ms/frame", file=sys.stderr)
    res = {**run_info(__file__, argv), "runs": runs}
    print(write_results(args.out, res, markdown))
    return 0


def markdown(res: dict) -> str:
    lines = [
        "# ONNX Runtime's spinning threads at a live frame rate",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        "The shipped `imaging-lag0`, onnxruntime, 2 intra-op threads, the whole engine step (front end included),",
        "one frame per period, each case a fresh process; rounds alternate. `CPU` is the process's CPU time per frame:",
        "above the step's wall time, the threads spun while the stream waited for its next frame.",
        "",
        "| frame | rate | spin | step p50 ms | step p99 ms | CPU ms per frame | period ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(f"| {r['size']}×{r['size']} | {r['rate_hz']:g} Hz | {'on' if r['spin'] else 'off'} | "
                     f"{r['step_ms']['p50']:.2f} | {r['step_ms']['p99']:.2f} | {r['cpu_ms_per_frame']:.2f} | {r['period_ms']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
