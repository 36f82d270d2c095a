"""What glibc's malloc costs a step: the engine with and without ``keep_heap``.

    python benchmarks/bench_host_heap.py [--steps 80]

Steps the shipped ``imaging-lag0`` (onnxruntime, 2 threads, one frame per step, as the
service does) in a fresh process per case, with :func:`rtdenoise.backends.base.keep_heap`
on and off (``RTDENOISE_KEEP_HEAP=0``), and times the step's three stages: the front end
(``normalize``), the network and the way back to counts (``to_counts``), median ms, past a
stream's first 20 s. A fresh process per case: glibc's thresholds move with what a process
has allocated and freed before (``bench_imaging_engine.py``, which steps torch engines in the
same process, does not show the difference). Writes
``benchmarks/results/host_heap.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import fresh_process_json, run_info, write_results  # noqa: E402

RESULTS = HERE / "results"
SIZES = (128, 512)


def _one(size: int, steps: int) -> dict:
    """In a fresh process: stage timings of one frame size."""
    import numpy as np

    from rtdenoise.backends import load_engine
    from rtdenoise.backends.base import keep_heap

    engine = load_engine("imaging-lag0", backend="onnxruntime", threads=2)
    state = engine.new_state()
    frames = np.random.default_rng(0).poisson(5.0, (32, 1, 1, size, size)).astype(np.uint16)
    settle = 2 * engine.config.horizon  # past the cold baseline's shrinking
    for i in range(settle + 10):
        engine.step(frames[i % 32][0], state)
    fe, t = state.frontend, {"front end": [], "network": [], "to counts": []}
    for i in range(steps):
        x = frames[i % 32]
        t0 = time.perf_counter()
        norm = fe.normalize(x)
        t1 = time.perf_counter()
        out = engine._net_step(norm.features, state.net)
        t2 = time.perf_counter()
        fe.to_counts(out, norm)
        t3 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2)):
            v and t[k].append(v * 1e3)
    med = {k: float(np.median(v)) for k, v in t.items()}
    return {"size": size, "kept": keep_heap(), "stages_ms": med, "total_ms": sum(med.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "host_heap"))
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(_one(args.case, args.steps)))
        return 0
    runs = []
    for _ in range(args.rounds):
        for size in SIZES:
            for keep in ("1", "0"):
                env = {**os.environ, "RTDENOISE_KEEP_HEAP": keep}
                r = fresh_process_json(__file__, ["--steps", str(args.steps), "--case", str(size)], env=env)
                runs.append(r)
                print(f"{size}² keep_heap={r['kept']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms"].items()),
                      file=sys.stderr)
    res = {**run_info(__file__, argv), "runs": runs}
    print(write_results(args.out, res, markdown))
    return 0


def markdown(res: dict) -> str:
    lines = ["# What glibc's malloc costs a step (`keep_heap` on and off)", "",
             f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
             "The shipped `imaging-lag0` (baseline following motion), onnxruntime, 2 threads, one frame per step, past a",
             "stream's first 20 s; a fresh process per case, rounds alternate. Median ms per stage.", "",
             "| frame | heap kept | front end | network | to counts | step |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["stages_ms"]
        lines.append(f"| {r['size']}×{r['size']} | {'yes' if r['kept'] else 'no'} | {s['front end']:.2f} | "
                     f"{s['network']:.2f} | {s['to counts']:.2f} | {r['total_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
