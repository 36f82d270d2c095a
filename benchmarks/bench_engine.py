"""Engine latency and throughput: incremental streaming steps against full-window recomputation.

Two ways to run it:

- ``pytest benchmarks/bench_engine.py --benchmark-only`` (pytest-benchmark tables), or
- ``python benchmarks/bench_engine.py --out benchmarks/results/engine.json``: medians and
  p99 over ``--steps`` timed calls after ``--warmup`` calls, with ``time.perf_counter``;
  writes the JSON and a markdown table (``engine.md`` beside it) with the machine.

What is measured, per backend (torch, onnxruntime; tensorrt where it is installed) and
model (the shipped ``spectral-lag0`` and ``spectral-lag5``):

- ``step``: one ``engine.step`` of a chunk of 1 or 8 frames for one stream, host front end
  included (what the service pays per message); reported per frame.
- ``window``: the naive alternative, ``engine.run`` over the last ``W`` frames for every new
  frame (W = the receptive field, and 101 frames as in DESIGN.md); per frame.
- ``batch``: one step of 1 frame for 1, 4 or 16 streams held in one state; frames/s of
  all streams together (ms/frame is the call's time over its ``streams`` frames).

Engines run with one intra-op thread (``--threads``): the lowest latency for one frame, and
what leaves the other cores to the front end and the service.

A shipped model that does not exist yet (or does not load) is replaced by a freshly initialized model of the
same arch and lag with the default ``ModelConfig`` (random weights: the same cost, no
denoising), and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

MODELS = ["spectral-lag0", "spectral-lag5"]
CPU_BACKENDS = ["torch", "onnxruntime"]
CHUNKS = [1, 8]
STREAMS = [1, 4, 16]
WINDOW_101 = 101


# ----------------------------------------------------------------------------- setup


@lru_cache(maxsize=None)
def get_model(name: str):
    """(Checkpoint, note): the shipped model, or a fresh default-config stand-in and why."""
    from rtdenoise.model.checkpoint import Checkpoint, load
    from rtdenoise.model.config import ModelConfig

    try:
        return load(name), ""
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        arch, _, lag = name.partition("-lag")
        cfg = ModelConfig(arch=arch, lag=int(lag or 0))
        note = (
            f"shipped model {name!r} not found ({type(e).__name__}); timing a freshly initialized "
            f"ModelConfig(arch={cfg.arch!r}, lag={cfg.lag}) with default depth {cfg.depth}, width {cfg.width} instead"
        )
        import torch

        torch.manual_seed(0)
        ckpt = Checkpoint(f"{name} (fresh, untrained)", cfg, cfg.build().state_dict(), fs=5.0)
        return ckpt, note


def available_backends() -> list[str]:
    out = list(CPU_BACKENDS)
    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            out.append("tensorrt")
    except ImportError:
        pass
    return out


@lru_cache(maxsize=None)
def get_engine(backend: str, model: str, threads: int = 1):
    import torch

    from rtdenoise.backends import load_engine

    ckpt, _ = get_model(model)
    if backend == "torch":
        torch.set_num_threads(threads)
        return load_engine(ckpt, backend="torch")
    if backend == "onnxruntime":
        return load_engine(ckpt, backend="onnxruntime", threads=threads)
    return load_engine(ckpt, backend=backend)


@lru_cache(maxsize=None)
def recording(n: int = 2400, seed: int = 0) -> np.ndarray:
    from rtdenoise.synth import simulate

    return simulate(n, seed=seed, photons=2000)["noisy"]


def _sync(engine) -> None:
    # Steps return host arrays, so device work is finished when they return; this is for
    # symmetry with the house rule "synchronize on both sides" should an engine go async.
    if getattr(engine, "backend", "") in ("torch", "tensorrt"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class Stepper:
    """A callable stepping one state through a recording, wrapping around at its end."""

    def __init__(self, engine, *, chunk: int = 1, streams: int = 1):
        self.engine, self.chunk, self.streams = engine, chunk, streams
        x = recording()
        self.x = np.stack([np.roll(x, 37 * i, axis=0) for i in range(streams)])  # (B, T, W): distinct streams
        self.state = engine.new_state(streams)
        self.pos = 0

    def __call__(self):
        if self.pos + self.chunk > self.x.shape[1]:
            self.pos = 0
        piece = self.x[:, self.pos : self.pos + self.chunk]
        self.pos += self.chunk
        return self.engine.step(piece if self.streams > 1 else piece[0], self.state)


class Windower:
    """The naive alternative: re-run the whole last ``window`` frames for every new frame."""

    def __init__(self, engine, window: int):
        self.engine, self.window = engine, window
        self.x = recording()
        self.pos = window

    def __call__(self):
        if self.pos >= self.x.shape[0]:
            self.pos = self.window
        out = self.engine.run(self.x[self.pos - self.window : self.pos])
        self.pos += 1
        return out[-1]


# ----------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # script mode needs no pytest
    pytest = None

if pytest is not None:
    _BACKENDS = [
        pytest.param(b, id=b, marks=[pytest.mark.tensorrt, pytest.mark.gpu] if b == "tensorrt" else [])
        for b in CPU_BACKENDS + ["tensorrt"]
    ]
    _MODELS = [pytest.param(m, id=m) for m in MODELS]

    def _engine_or_skip(backend: str, model: str):
        if backend not in available_backends():
            pytest.skip(f"{backend} is not available here (TensorRT needs `pip install rtdenoise[tensorrt]` and an NVIDIA GPU)")
        _, note = get_model(model)
        if note:
            warnings.warn(note, stacklevel=2)
        return get_engine(backend, model)

    @pytest.mark.parametrize("chunk", [pytest.param(c, id=f"chunk{c}") for c in CHUNKS])
    @pytest.mark.parametrize("model", _MODELS)
    @pytest.mark.parametrize("backend", _BACKENDS)
    def test_step_latency(benchmark, backend, model, chunk):
        engine = _engine_or_skip(backend, model)
        step = Stepper(engine, chunk=chunk)
        for _ in range(50):
            step()
        benchmark.extra_info.update(frames_per_call=chunk, model_note=get_model(model)[1])
        benchmark(step)

    @pytest.mark.parametrize("window", [pytest.param("rf", id="window-rf"), pytest.param(WINDOW_101, id="window-101")])
    @pytest.mark.parametrize("model", _MODELS)
    @pytest.mark.parametrize("backend", _BACKENDS)
    def test_window_recompute(benchmark, backend, model, window):
        engine = _engine_or_skip(backend, model)
        w = engine.receptive_field if window == "rf" else window
        run = Windower(engine, w)
        for _ in range(5):
            run()
        benchmark.extra_info.update(window_frames=w, model_note=get_model(model)[1])
        benchmark(run)

    @pytest.mark.parametrize("streams", [pytest.param(s, id=f"streams{s}") for s in STREAMS])
    @pytest.mark.parametrize("model", _MODELS)
    @pytest.mark.parametrize("backend", _BACKENDS)
    def test_batched_throughput(benchmark, backend, model, streams):
        engine = _engine_or_skip(backend, model)
        step = Stepper(engine, chunk=1, streams=streams)
        for _ in range(50):
            step()
        benchmark.extra_info.update(streams=streams, model_note=get_model(model)[1])
        benchmark(step)


# ----------------------------------------------------------------------------- script mode


def time_calls(fn, *, steps: int, warmup: int, engine=None) -> np.ndarray:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    t = np.empty(steps)
    for i in range(steps):
        _sync(engine)
        t0 = time.perf_counter()
        fn()
        _sync(engine)
        t[i] = time.perf_counter() - t0
    return t


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def _stats(t: np.ndarray, frames_per_call: int) -> dict:
    per_frame = t / frames_per_call
    return {
        "calls": int(t.size),
        "frames_per_call": frames_per_call,
        "median_ms_per_frame": float(np.median(per_frame) * 1e3),
        "p99_ms_per_frame": float(np.percentile(per_frame, 99) * 1e3),
        "median_ms_per_call": float(np.median(t) * 1e3),
        "p99_ms_per_call": float(np.percentile(t, 99) * 1e3),
        "frames_per_s": float(frames_per_call / np.median(t)),
    }


def run_all(*, backends, models, steps: int, warmup: int, window_steps: int, threads: int, log=print) -> dict:
    results = {"machine": machine(), "settings": {"steps": steps, "warmup": warmup, "window_steps": window_steps, "threads": threads}, "notes": [], "rows": []}
    for model in models:
        ckpt, note = get_model(model)
        if note:
            log(f"NOTE: {note}")
            results["notes"].append(note)
        for backend in backends:
            engine = get_engine(backend, model, threads)
            base = {"backend": backend, "model": model, "model_name": ckpt.name, "lag": ckpt.lag, "receptive_field": ckpt.receptive_field}
            for chunk in CHUNKS:
                n = max(steps // chunk, 50)
                row = {**base, "kind": "step", "chunk": chunk, "streams": 1, **_stats(time_calls(Stepper(engine, chunk=chunk), steps=n, warmup=warmup, engine=engine), chunk)}
                results["rows"].append(row)
                log(_line(row))
            for w in sorted({ckpt.receptive_field, WINDOW_101}):
                row = {**base, "kind": "window", "window": w, "chunk": 1, "streams": 1,
                       **_stats(time_calls(Windower(engine, w), steps=window_steps, warmup=min(warmup, 10), engine=engine), 1)}
                results["rows"].append(row)
                log(_line(row))
            for b in STREAMS:
                t = time_calls(Stepper(engine, chunk=1, streams=b), steps=steps, warmup=warmup, engine=engine)
                row = {**base, "kind": "batch", "chunk": 1, "streams": b, **_stats(t, b)}  # a call = b frames
                results["rows"].append(row)
                log(_line(row))
    return results


def _what(row: dict) -> str:
    if row["kind"] == "step":
        return f"step, chunk {row['chunk']}"
    if row["kind"] == "window":
        return f"recompute {row['window']}-frame window"
    return f"batch of {row['streams']} streams, 1 frame"


def _line(row: dict) -> str:
    return (
        f"{row['backend']:12s} {row['model']:14s} {_what(row):32s} median {row['median_ms_per_frame']:8.3f} ms/frame  "
        f"p99 {row['p99_ms_per_frame']:8.3f}  {row['frames_per_s']:10.0f} frames/s"
    )


def markdown(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        "# Engine latency and throughput",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable), {m['platform']}, Python {m['python']}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}"
        + (f"; GPU {m['gpu']}" if m["gpu"] else "")
        + (f"; TensorRT {m['tensorrt']}" if m["tensorrt"] else "")
        + ".",
        "",
        f"{s['steps']} timed calls after {s['warmup']} warm-up calls ({s['window_steps']} for window recomputation), "
        f"{s['threads']} thread(s) per engine, `time.perf_counter`; per-frame times divide a call by its frames. "
        "`step` includes the host front end; `window` re-runs the last W frames for every new frame.",
        "",
    ]
    for note in results["notes"]:
        lines += [f"> **Note:** {note}", ""]
    lines += [
        "| backend | model | what | median ms/frame | p99 ms/frame | frames/s |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['backend']} | {r['model']} | {_what(r)} | {r['median_ms_per_frame']:.3f} | {r['p99_ms_per_frame']:.3f} | {r['frames_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Engine latency/throughput benchmark (script mode).")
    p.add_argument("--out", default="benchmarks/results/engine.json", help="JSON output; the markdown table goes beside it as engine.md")
    p.add_argument("--md", default=None, help="markdown output (default: <out dir>/engine.md)")
    p.add_argument("--steps", type=int, default=2000, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    p.add_argument("--window-steps", type=int, default=200, help="timed calls for the window recomputation (slow)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--backends", default=",".join(available_backends()), help="comma-separated")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped model names")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.window_steps < 1:
        p.error("--steps and --window-steps must be >= 1, --warmup >= 0")
    res = run_all(
        backends=args.backends.split(","), models=args.models.split(","), steps=args.steps, warmup=args.warmup,
        window_steps=args.window_steps, threads=args.threads,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    md = Path(args.md) if args.md else out.with_name("engine.md")
    md.write_text(markdown(res))
    print(f"wrote {out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
