"""Throughput of on-the-fly training instances against the optimizer's appetite.

    python benchmarks/bench_dataset.py   # writes benchmarks/results/dataset.{json,md}

Measures, on one core each (training uses one worker process for instances and one
for the optimizer): instances/s of raw (noisy, target) windows, instances/s once the
causal front end has turned them into network features, and instances/s the optimizer
consumes with the default model. The data side must keep up with the optimizer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine  # noqa: E402

from rtdenoise.model.config import ModelConfig  # noqa: E402
from rtdenoise.synth.dataset import SpectralDataset  # noqa: E402
from rtdenoise.train import TrainConfig, lagged_loss, normalize_batch  # noqa: E402


def rate(fn, seconds: float = 8.0) -> float:
    fn()  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def main() -> int:
    torch.set_num_threads(1)
    tc, mc = TrainConfig(), ModelConfig()
    ds = SpectralDataset(window=tc.window, seed=0)
    rng = np.random.default_rng(0)
    b = tc.batch

    def raw():
        ds.batch(rng, b)
        return b

    def features():
        normalize_batch(*ds.batch(rng, b), mc)
        return b

    net = mc.build()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, t = normalize_batch(*ds.batch(rng, b), mc)

    def optimizer():
        loss = lagged_loss(net(x), t, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return b

    res = {
        "machine": machine(),
        "window_frames": tc.window,
        "batch": b,
        "raw_instances_per_s": rate(raw),
        "feature_instances_per_s": rate(features),
        "optimizer_instances_per_s": rate(optimizer),
        "command": "python benchmarks/bench_dataset.py",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(res, indent=2))
    md = (
        "# Training-instance throughput (one core each)\n\n"
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`\n\n"
        f"Windows of {tc.window} frames × 152 bins, batches of {b}.\n\n"
        "| stage | instances/s |\n|---|---|\n"
        f"| synthetic signal + detector noise | {res['raw_instances_per_s']:.0f} |\n"
        f"| + causal front end (subspace tracking) | {res['feature_instances_per_s']:.0f} |\n"
        f"| optimizer step, default model | {res['optimizer_instances_per_s']:.0f} |\n"
    )
    (out / "dataset.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
