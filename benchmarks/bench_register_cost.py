"""What following motion costs an imaging step: the default imaging config with its
front end registering each frame (``config.register``) and without, interleaved frame by
frame on one machine, ONNX Runtime, 2 threads, one stream past its first 20 s.

    python benchmarks/bench_register_cost.py [--sizes 128 512] [--steps 40]

Writes ``benchmarks/results/register_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    import torch

    from rtdenoise.backends import load_engine
    from rtdenoise.model.checkpoint import Checkpoint
    from rtdenoise.model.config import default_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    rows = []
    for hw in args.sizes:
        engines, states = {}, {}
        for reg in (False, True):
            cfg = default_config("imaging", register=reg)
            torch.manual_seed(0)
            engines[reg] = load_engine(Checkpoint("bench", cfg, cfg.build().state_dict(), fs=30.0), backend="onnxruntime", threads=2)
            states[reg] = engines[reg].new_state(1, (hw, hw))
        warm = 2 * cfg.horizon  # past the cold baseline's shrinking
        frames = np.random.default_rng(0).poisson(5, (1, warm + args.steps, hw, hw)).astype(np.uint16)
        for reg, eng in engines.items():
            for c in range(0, warm, 20):
                eng.step(frames[:, c : c + 20], states[reg])
        times = {False: [], True: []}
        for i in range(warm, warm + args.steps):
            for reg in ((False, True) if i % 2 else (True, False)):  # interleaved: the machine's drift hits both
                t0 = time.perf_counter()
                engines[reg].step(frames[:, i : i + 1], states[reg])
                times[reg].append(time.perf_counter() - t0)
        row = {"size": hw, **{("register" if r else "still") + "_p50_ms": float(np.median(v)) * 1e3 for r, v in times.items()}}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/bench_register_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "register_cost.json").write_text(json.dumps(res, indent=2))
    md = ["# What following motion costs an imaging step", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          "Default imaging config, random weights, ONNX Runtime with 2 threads, one stream past its first 20 s, "
          "one frame per step; the two configs interleaved frame by frame. Median ms per step.", "",
          "| frame | baseline still | baseline follows motion | cost |", "|---|---|---|---|"]
    md += [f"| {r['size']}×{r['size']} | {r['still_p50_ms']:.2f} | {r['register_p50_ms']:.2f} | "
           f"+{r['register_p50_ms'] - r['still_p50_ms']:.2f} |" for r in rows]
    (RESULTS / "register_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
