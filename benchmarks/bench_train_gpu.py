"""How fast an imaging model trains, on the CPU or a GPU: what bounds it, the optimizer or the instances.

    python benchmarks/bench_train_gpu.py [--device cuda] [--workers 14] [--seconds 10] [--out DIR]

- ``network``: optimizer steps (forward, backward, AdamW) on random instances already on the
  device, for the shipped imaging model's width (8) and wider ones (16, 32), batch 32 of 48
  frames × 64 × 64 (the fine-tuning instances): instances/s the device alone could take.
- ``instances``: synthetic training instances (movie, detector noise, normalization) made by
  ``--workers`` processes through the same DataLoader ``rtdenoise train`` uses: instances/s the
  CPU can feed (a CPU run, or a GPU run with ``instances_on_device=False``);
- ``scenes``: the clean movies alone, made by the same workers (a GPU run's default, which adds
  the PMT noise and the front end on the card), and ``finish``: that noise and front end on the
  device (``train._finish_on``, the front end replayed as a CUDA graph as training does; on a GPU
  also ``finish_eager``, kernel by kernel), instances/s.

Training runs at the smallest of what feeds it and what takes it (on one card, the optimizer and
``finish`` share it). Writes ``train_gpu.{json,md}`` to ``--out`` (default
benchmarks/results) with the card's name (or the CPU's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import run_info, write_results  # noqa: E402

from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.train import FrontEndGraphs, _Batches, _CleanBatches, _finish_on, lagged_loss  # noqa: E402

BATCH, WINDOW, PATCH = 32, 48, (64, 64)


def _sync(device: str):
    """Wait for the device's queued work (a GPU's kernels run after the call returns)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def network(width: int, device: str, seconds: float) -> dict:
    cfg = dataclasses.replace(load("imaging-lag0").config, width=width)
    torch.manual_seed(0)
    net = cfg.build().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(BATCH, WINDOW, *PATCH, device=device)
    t = torch.randn(BATCH, WINDOW, *PATCH, device=device)

    def step():
        loss = lagged_loss(net(x), t, cfg.lag)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    sync = _sync(device)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step().item()
        n += 1
    dt = time.perf_counter() - t0
    return {"width": width, "parameters": sum(p.numel() for p in net.parameters()), "steps": n,
            "step_ms": dt / n * 1e3, "instances_per_s": n * BATCH / dt}


def instances(workers: int, seconds: float, pin: bool, scenes_only: bool = False) -> dict:
    from rtdenoise.synth.dataset import ImagingDataset

    cfg = load("imaging-lag0").config
    ds = ImagingDataset(None, None, window=WINDOW, patch=PATCH, seed=0)
    source = _CleanBatches(ds, BATCH, [0, 0, 0]) if scenes_only else _Batches(ds, cfg, BATCH, [0, 0, 0], 0.5)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None, pin_memory=pin)
    it = iter(loader)
    next(it)  # workers started
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        next(it)
        n += 1
    dt = time.perf_counter() - t0
    del it
    return {"workers": workers, "batches": n, "instances_per_s": n * BATCH / dt}


def finish(device: str, seconds: float, graphs: bool = True) -> dict:
    from rtdenoise.synth.dataset import ImagingDataset

    cfg = load("imaging-lag0").config
    clean, detector = ImagingDataset(None, None, window=WINDOW, patch=PATCH, seed=0).clean_batch(np.random.default_rng(0), BATCH)
    clean, detector = torch.from_numpy(clean).to(device), torch.from_numpy(detector).to(device)
    sync = _sync(device)
    g = FrontEndGraphs() if graphs else None
    _finish_on(clean, detector, cfg, 0.5, graphs=g)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        _finish_on(clean, detector, cfg, 0.5, graphs=g)
        sync()
        n += 1
    dt = time.perf_counter() - t0
    return {"batch_ms": dt / n * 1e3, "instances_per_s": n * BATCH / dt, "graph": bool(g and g._graphs)}


def card(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


def markdown(res: dict) -> str:
    lines = ["# Training an imaging model: the optimizer's pace against the instances' pace", "",
             f"Machine: {res['machine']}. Device: **{res['card']}**, torch {res['torch']}. Date: {res['date']}. "
             f"Command: `{res['command']}`", "",
             f"Batch {BATCH} instances of {WINDOW} frames × {PATCH[0]}×{PATCH[1]} (the fine-tuning instances).", "",
             "| optimizer steps on the device | parameters | step ms | instances/s |", "|---|---|---|---|"]
    lines += [f"| width {r['width']} | {r['parameters']} | {r['step_ms']:.1f} | {r['instances_per_s']:.0f} |"
              for r in res["network"]]
    i = res["instances"]
    lines += ["", f"Instances made by {i['workers']} worker processes (the DataLoader `rtdenoise train` uses): "
              f"**{i['instances_per_s']:.0f} instances/s**.", ""]
    if res.get("scenes"):
        sc, fi = res["scenes"], res["finish"]
        lines += [f"Split as a GPU run makes them: the clean scenes by the same {sc['workers']} workers "
                  f"**{sc['instances_per_s']:.0f}/s**; their PMT noise and the front end on the device "
                  f"**{fi['instances_per_s']:.0f}/s** ({fi['batch_ms']:.1f} ms a batch"
                  + (", the front end as a CUDA graph" if fi.get("graph") else "") + ").", ""]
        if res.get("finish_eager"):
            fe = res["finish_eager"]
            lines += [f"The same without the graph (kernel by kernel): {fe['instances_per_s']:.0f}/s "
                      f"({fe['batch_ms']:.1f} ms a batch).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--widths", default="8,16,32")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    res = run_info(__file__, argv) | {"card": card(args.device), "torch": torch.__version__, "network": [],
                                       "instances": None}
    for w in map(int, args.widths.split(",")):
        res["network"].append(network(w, args.device, args.seconds))
        print(res["network"][-1], flush=True)
    pin = args.device.startswith("cuda")
    res["instances"] = instances(args.workers, args.seconds, pin)
    print(res["instances"], flush=True)
    res["scenes"] = instances(args.workers, args.seconds, pin, scenes_only=True)
    res["finish"] = finish(args.device, args.seconds)
    if args.device.startswith("cuda"):
        res["finish_eager"] = finish(args.device, args.seconds, graphs=False)
    print(res["scenes"], res["finish"], res.get("finish_eager"), flush=True)
    print(write_results(args.out / "train_gpu", res, markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
