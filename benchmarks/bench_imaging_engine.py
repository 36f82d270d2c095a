"""Imaging engine speed on this CPU: per-frame steps at 128 × 128 and 512 × 512.

    python benchmarks/bench_imaging_engine.py [--steps 60] [--threads 2]

For each imaging family (the default ``imaging-unet`` config and the factorized one at the
same width and depth) and each CPU backend (torch, onnxruntime):

- ``step``: one ``engine.step`` of 1 frame for one stream, front end included (what a live
  stream pays per frame), once the stream is past its first 20 s: median and p99 ms, and
  frames/s (1000 / median); and the median in its first 20 s, when the front end also
  shrinks the cold baseline;
- ``window``: the alternative without streaming state, ``engine.run`` over the last
  receptive field of frames for every new frame (what a non-causal-streaming denoiser
  pays per output); median ms, and the ratio step ÷ window.

Weights are random (the cost of a step does not depend on them); a shipped imaging model,
when there is one, has the same config. Writes ``benchmarks/results/imaging_engine.{json,md}``
with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SIZES = (128, 512)


def _engine(arch: str, backend: str, threads: int):
    import torch

    from rtdenoise.backends import load_engine
    from rtdenoise.model.checkpoint import Checkpoint
    from rtdenoise.model.config import ModelConfig, default_config

    cfg = ModelConfig(**(default_config("imaging").to_dict() | {"arch": arch}))
    torch.manual_seed(0)
    ck = Checkpoint(f"{arch} (random weights)", cfg, cfg.build().state_dict(), fs=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX tracer's notes on shape arithmetic
        return load_engine(ck, backend=backend, threads=threads), cfg


def _movie(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(rng.uniform(1, 20, (1, size, size)), (n, size, size)).astype(np.uint16)


def step_ms(engine, size: int, steps: int, warmup: int = 10, *, settled: bool = True) -> np.ndarray:
    """1-frame steps of one stream: ``settled``, as after a stream's first ``2 · horizon``
    frames (its front end's count set past them, as 20 s of frames would leave it); else
    from its start, while the front end still shrinks the cold baseline."""
    x = _movie(steps + warmup, size)
    st = engine.new_state(1, (size, size))
    if settled:
        st.frontend.count[:] = 10**6
    times = []
    for i in range(len(x)):
        t = time.perf_counter()
        engine.step(x[i : i + 1], st)
        times.append((time.perf_counter() - t) * 1e3)
    return np.asarray(times[warmup:])


def window_ms(engine, size: int, frames: int, reps: int = 3) -> np.ndarray:
    x = _movie(frames, size)
    engine.run(x)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        engine.run(x)
        times.append((time.perf_counter() - t) * 1e3)
    return np.asarray(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed 1-frame steps per case")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of the backend (this machine has 2 cores)")
    args = ap.parse_args(argv)
    res = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_imaging_engine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads,
        "cases": [],
    }
    for arch in ("imaging-unet", "imaging-fact"):
        for backend in ("torch", "onnxruntime"):
            eng, cfg = _engine(arch, backend, args.threads)
            for size in SIZES:
                s = step_ms(eng, size, args.steps)
                cold = step_ms(eng, size, args.steps, settled=False)
                w = window_ms(eng, size, cfg.receptive_field, reps=2 if size > 128 else 3)
                case = {"arch": arch, "backend": backend, "size": size, "receptive_field": cfg.receptive_field,
                        "step_p50_ms": float(np.median(s)), "step_p99_ms": float(np.percentile(s, 99)),
                        "frames_per_s": 1e3 / float(np.median(s)), "window_ms": float(np.median(w)),
                        "cold_step_p50_ms": float(np.median(cold))}
                case["step_over_window"] = case["step_p50_ms"] / case["window_ms"]
                res["cases"].append(case)
                print(json.dumps(case), file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "imaging_engine.json").write_text(json.dumps(res, indent=2))
    lines = [
        "# Imaging engine speed (one stream, one frame per step, front end included)",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        f"Default imaging config (width 8, depth 4, 31-frame temporal field, a baseline that follows motion), "
        f"random weights, {args.threads} threads.",
        "`step`: a stream past its first 20 s (2 × the front end's horizon); `first 20 s`: from its start,",
        "while the front end also shrinks the cold baseline. `window` recomputes the whole receptive field",
        "for every new frame (no streaming state).",
        "",
        "| model | backend | frame | step p50 ms | step p99 ms | frames/s | first 20 s p50 ms | window ms | step ÷ window |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        lines.append(f"| {c['arch']} | {c['backend']} | {c['size']}×{c['size']} | {c['step_p50_ms']:.2f} | "
                     f"{c['step_p99_ms']:.2f} | {c['frames_per_s']:.0f} | {c['cold_step_p50_ms']:.2f} | {c['window_ms']:.1f} | 1/{1 / c['step_over_window']:.0f} |")
    (RESULTS / "imaging_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
