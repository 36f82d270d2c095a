"""The GPU path, measured on a lent NVIDIA card: the shipped imaging model on CUDA torch.

    python benchmarks/bench_gpu.py [--steps 200] [--seconds 15] [--parts engine,live] [--out DIR]

Needs a CUDA GPU (it says so and exits 2 without one). Measures, for the issue's cases:

- ``equal``: the CUDA engine (CUDA graphs on) against the CPU torch engine on the same
  movie, frame by frame: the largest difference, in counts and relative to the output's range;
- ``engine``: ``engine.step`` of one frame per stream for 128 × 128 and 512 × 512, 1 and 16
  streams in one state; the front end on the host (numpy, as every backend had it) or on the
  GPU, CUDA graphs off and on, TF32 off and on: per-step p50/p99 ms and frames/s across the
  streams (streams × 1000 / p50);
- ``floor``: the same paced load through a bare ZeroMQ echo (no engine), the transport's share;
- ``live``: ``rtdenoise demo --modality imaging`` (the service as its own process, backend
  auto = CUDA torch here) at 512 × 512 / 30 Hz and 128 × 128 / 100 Hz, spin mode on and off:
  frames lost and latency from each frame's due time to the subscriber.

TensorRT is measured where it is installed (``pip install rtdenoise[tensorrt]``); where it
is not, the JSON says so. Writes ``gpu.{json,md}`` to ``--out`` (default benchmarks/results)
with the card's name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import run_info  # noqa: E402

MODEL = "imaging-lag0"
SIZES = (128, 512)
BATCHES = (1, 16)
# (CUDA graph, TF32, front end on the GPU, float16 network): the host front end first, as every backend had it
ENGINE_CONFIGS = [(False, False, False, False), (True, False, False, False), (False, False, True, False),
                  (True, False, True, False), (True, True, True, False), (True, False, True, True)]
DEVICE = "cuda"  # --device cpu: a dry run of this script where there is no GPU
CASE_S = 15.0  # an engine case stops timing after this long (at least 40 steps)
LIVE = [(512, 30.0, 2.0), (128, 100.0, 2.0)]  # size, rate Hz, p99 target ms on a GPU (#11)


def _movie(n: int, batch: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam = rng.uniform(1, 20, (batch, 1, size, size))
    return rng.poisson(lam, (batch, n, size, size)).astype(np.uint16)


def card() -> dict:
    import torch

    if DEVICE != "cuda":
        return {"name": "none (dry run on the CPU)", "memory_gib": 0, "multiprocessors": 0, "torch": torch.__version__,
                "cuda": None, "tensorrt": None}
    p = torch.cuda.get_device_properties(0)
    info = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def equal(steps: int = 48, size: int = 128) -> list[dict]:
    from rtdenoise.backends import load_engine

    x = _movie(steps, 1, size, seed=1)[0]
    ref = load_engine(MODEL, backend="torch", device="cpu", threads=4)
    sr = ref.new_state(1)
    a = np.concatenate([ref.step(x[i : i + 1], sr) for i in range(steps)])
    res = []
    # chunks of 6: the graph replayed 6 times a call
    for tf32, chunk, half in ((False, 1, False), (True, 1, False), (False, 6, False), (False, 1, True)):
        gpu = load_engine(MODEL, backend="torch", device=DEVICE, cuda_graph=True, tf32=tf32, half=half)
        sg = gpu.new_state(1)
        b = np.concatenate([gpu.step(x[i : i + chunk], sg) for i in range(0, steps, chunk)])
        diff = float(np.abs(a - b).max())
        res.append({"frames": steps, "chunk": chunk, "size": size, "tf32": tf32, "half": half, "max_abs_diff_counts": diff,
                    "max_diff_over_range": diff / float(a.max() - a.min()),
                    "output_range": [float(a.min()), float(a.max())]})
    return res


def engine_case(size: int, batch: int, graph: bool, steps: int, tf32: bool = False, device_frontend: bool = True,
                half: bool = False) -> dict:
    from rtdenoise.backends import load_engine

    eng = load_engine(MODEL, backend="torch", device=DEVICE, cuda_graph=graph, tf32=tf32, device_frontend=device_frontend,
                      half=half)
    warm = 20
    x = _movie(16, batch, size)  # frames cycled: drawing 220 × 16 Poisson frames of 512 × 512 takes a minute
    st = eng.new_state(batch)
    times = []
    t0 = time.perf_counter()
    for i in range(steps + warm):
        t = time.perf_counter()
        eng.step(x[:, i % 16 : i % 16 + 1], st)  # returns host memory: the GPU's work is done
        times.append((time.perf_counter() - t) * 1e3)
        if i >= warm + 40 and t - t0 > CASE_S:  # a slow case (the host front end at 16 × 512²: 60 s) stops early
            break
    s = np.asarray(times[warm:])
    return {"size": size, "streams": batch, "cuda_graph": graph, "tf32": tf32, "half": half, "device_frontend": device_frontend,
            "steps": len(s), "step_p50_ms": float(np.median(s)), "step_p99_ms": float(np.percentile(s, 99)),
            "frames_per_s": batch * 1e3 / float(np.median(s))}


def breakdown(size: int = 512, batch: int = 16, half: bool = True, reps: int = 40) -> dict:
    """Where one step's time goes (graph on, front end on the GPU): each part of ``engine.step``
    alone, synchronized, median ms: validation, the copy to the card, the graph's replay, the
    copy back, and the same copy back through pinned memory plus the copy out of it."""
    import torch

    from rtdenoise.backends import load_engine
    from rtdenoise.backends.torch_engine import _to_device

    eng = load_engine(MODEL, backend="torch", device=DEVICE, half=half)
    x = _movie(1, batch, size)
    st = eng.new_state(batch)
    for _ in range(5):
        eng.step(x, st)
    g, sync = st.net, torch.cuda.synchronize
    pin = torch.empty(tuple(g.static_out.shape), pin_memory=True)
    parts: dict[str, list[float]] = {k: [] for k in ("step", "check", "to_card", "replay", "to_host", "to_host_pinned",
                                                      "out_of_pinned")}
    with torch.inference_mode():
        for _ in range(reps):
            sync()
            t = [time.perf_counter()]
            eng.step(x, st)
            sync()
            t.append(time.perf_counter())
            xc = eng.check_frames(x, batch=batch, shape=st.shape)
            t.append(time.perf_counter())
            g.static_in.copy_(_to_device(xc, eng.device))
            sync()
            t.append(time.perf_counter())
            g.graph.replay()
            sync()
            t.append(time.perf_counter())
            g.static_out.cpu().numpy()
            t.append(time.perf_counter())
            pin.copy_(g.static_out, non_blocking=True)
            sync()
            t.append(time.perf_counter())
            pin.numpy().copy()
            t.append(time.perf_counter())
            for k, a, b in zip(parts, t, t[1:]):
                parts[k].append((b - a) * 1e3)
    return {"size": size, "streams": batch, "half": half} | {f"{k}_ms": float(np.median(v)) for k, v in parts.items()}


def live_case(size: int, rate: float, seconds: float, spin: bool) -> dict:
    from rtdenoise.demo import run_demo

    r = run_demo(modality="imaging", size=size, rate=rate, seconds=seconds, plot_path=None, progress=False, spin=spin)
    keep = ("shape", "rate_hz", "frames_in", "frames_lost", "latency_ms", "latency_stages_ms_p50", "backend", "snr_db")
    return {k: r[k] for k in keep if k in r} | {"spin": spin}


_ECHO = ("import sys, threading; sys.path.insert(0, {here!r}); import bench_latency as b; "
         "b.echo_server({sub!r}, {pub!r}, threading.Event())")


def floor_case(size: int, rate: float, seconds: float, transport: str = "tcp") -> dict:
    """The transport floor for this frame size: a bare ZeroMQ echo in its own process (decode,
    float32 copy, encode; no engine), paced as the live case, latency due time → subscriber."""
    import subprocess

    from bench_latency import free_port

    from rtdenoise.bench import paced_load

    import tempfile

    tmp = tempfile.mkdtemp(prefix="rtdenoise-floor-")
    sub, pub = ((f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}") if transport == "tcp"
                else (f"ipc://{tmp}/in", f"ipc://{tmp}/out"))
    proc = subprocess.Popen([sys.executable, "-c", _ECHO.format(here=str(HERE), sub=sub, pub=pub)])
    try:
        time.sleep(1.5)  # imports, binds
        n = max(10, int(rate * seconds))
        movie = _movie(16, 1, size)[0]
        res = paced_load(sub, pub, {"echo": movie[np.arange(n) % 16]}, rate=rate, fs=rate)
        lat = res.latency_summary()
        return {"size": size, "rate_hz": rate, "transport": transport, "frames_in": res.frames_in, "frames_lost": res.frames_lost,
                "latency_ms": {k: lat[k] for k in ("p50", "p99", "max")}}
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per engine case")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per live case")
    ap.add_argument("--parts", default="equal,live,floor,engine,breakdown",
                    help="floor_ipc: the floor over ipc:// too; breakdown: the parts of a 16 x 512² step")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script (figures meaningless)")
    args = ap.parse_args(argv)
    import torch

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with one",
              file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    parts = set(args.parts.split(","))
    res = {**run_info(__file__, argv), "card": card(), "model": MODEL}
    print(json.dumps(res), file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "gpu.json").write_text(json.dumps(res, indent=1))
        (out / "gpu.md").write_text(markdown(res))

    if "equal" in parts:
        res["equal"] = equal()
        print(json.dumps(res["equal"]), file=sys.stderr, flush=True)
        save()
    if "live" in parts:
        res["live"] = []
        for size, rate, target in LIVE:
            for spin in (False, True):
                c = live_case(size, rate, args.seconds, spin) | {"p99_target_ms": target}
                c["met"] = c["frames_lost"] == 0 and c["latency_ms"]["p99"] <= target
                res["live"].append(c)
                print(json.dumps(c), file=sys.stderr, flush=True)
                save()
    if "floor" in parts or "floor_ipc" in parts:
        res["floor"] = []
        for size, rate, _ in LIVE:
            for transport in ("tcp", "ipc") if "floor_ipc" in parts else ("tcp",):
                c = floor_case(size, rate, args.seconds, transport)
                res["floor"].append(c)
                print(json.dumps(c), file=sys.stderr, flush=True)
                save()
    if "engine" in parts:
        res["engine"] = []
        for size in SIZES:
            for batch in BATCHES:
                for graph, tf32, dev, half in ENGINE_CONFIGS:
                    c = engine_case(size, batch, graph, args.steps, tf32, dev, half)
                    res["engine"].append(c)
                    print(json.dumps(c), file=sys.stderr, flush=True)
                    save()
    if "breakdown" in parts and DEVICE == "cuda":
        res["breakdown"] = [breakdown(half=h) for h in (False, True)]
        print(json.dumps(res["breakdown"]), file=sys.stderr, flush=True)
    save()
    print(markdown(res))
    return 0


def _ratios(res: dict) -> list[str]:
    """The issue's ratio per live case, where the floor and the engine were measured in the same run."""
    steps = {e["size"]: e["step_p99_ms"] for e in res.get("engine", [])
             if e["streams"] == 1 and e["device_frontend"] and e["cuda_graph"] and not e["tf32"] and not e.get("half")}
    floors = {f["size"]: f["latency_ms"]["p99"] for f in res.get("floor", []) if f.get("transport", "tcp") == "tcp"}
    out = []
    for r in res.get("live", []):
        size = r["shape"][0]
        if size in steps and size in floors:
            out.append(f"{size}² {'spin' if r['spin'] else 'default'} "
                       f"{r['latency_ms']['p99'] / (floors[size] + steps[size]):.1f}")
    return out


def markdown(res: dict) -> str:
    c = res["card"]
    lines = [
        "# The GPU path (shipped imaging model on CUDA torch)",
        "",
        f"Card: **{c['name']}** ({c['memory_gib']} GiB, {c['multiprocessors']} SMs), torch {c['torch']}, CUDA {c['cuda']}, "
        f"TensorRT {c['tensorrt'] or 'not installed'}. Host: {res['machine']}. Date: {res['date']}. Model: `{res['model']}`.",
        f"Command: `{res['command']}`",
        "",
    ]
    for e in res.get("equal", []):
        prec = "float16 network" if e.get("half") else f"TF32 {'on' if e['tf32'] else 'off'}"
        lines += [f"CUDA (graphs on, {prec}, chunks of {e.get('chunk', 1)}) vs CPU torch, "
                  f"{e['frames']} frames of "
                  f"{e['size']}×{e['size']}: largest difference {e['max_abs_diff_counts']:.2e} counts, "
                  f"{e['max_diff_over_range']:.1e} of the output's range.", ""]
    if res.get("engine"):
        lines += ["## engine.step, one frame per stream", "",
                  "| frame | streams | front end | CUDA graph | network precision | step p50 ms | step p99 ms | frames/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in res["engine"]:
            lines.append(f"| {e['size']}×{e['size']} | {e['streams']} | {'GPU' if e['device_frontend'] else 'host'} | "
                         f"{'on' if e['cuda_graph'] else 'off'} | "
                         f"{'float16' if e.get('half') else 'TF32' if e['tf32'] else 'float32'} | "
                         f"{e['step_p50_ms']:.2f} | {e['step_p99_ms']:.2f} | {e['frames_per_s']:.0f} |")
        lines.append("")
    if res.get("breakdown"):
        keys = ("step", "check", "to_card", "replay", "to_host", "to_host_pinned", "out_of_pinned")
        lines += ["## One step's parts (graph on, front end on the GPU), median ms", "",
                  "`to_host_pinned` + `out_of_pinned`: the copy back through a pinned buffer and out of it, instead of `to_host`.",
                  "", "| frame | streams | network | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
        for b in res["breakdown"]:
            lines.append(f"| {b['size']}×{b['size']} | {b['streams']} | {'float16' if b['half'] else 'float32'} | "
                         + " | ".join(f"{b[k + '_ms']:.2f}" for k in keys) + " |")
        lines.append("")
    if res.get("live"):
        lines += ["## Live through the service (its own process, loopback TCP)", "",
                  "Latency from each frame's due time to the subscriber, ms.", "",
                  "`in / service / out`: the p50 of each stage: due time to the service's receipt, receipt to its "
                  "publish (queue and step), publish to the subscriber.", "",
                  "| frames | rate | spin | backend | frames in | lost | p50 | p99 | max | in / service / out | p99 target | met |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["live"]:
            lat, st = r["latency_ms"], r.get("latency_stages_ms_p50")
            stages = " / ".join(f"{st[k]:.2f}" for k in ("in", "service", "out")) if st else "?"
            lines.append(f"| {'×'.join(map(str, r['shape']))} | {r['rate_hz']:g} Hz | {'on' if r['spin'] else 'off'} | "
                         f"{r.get('backend', '?')} | {r['frames_in']} | {r['frames_lost']} | {lat['p50']:.2f} | "
                         f"{lat['p99']:.2f} | {lat['max']:.2f} | {stages} | {r['p99_target_ms']:g} | "
                         f"{'yes' if r['met'] else '**no**'} |")
    if res.get("floor"):
        lines += ["", "## The transport floor (a bare ZeroMQ echo in its own process, no engine)", "",
                  "| frames | rate | transport | frames in | lost | p50 | p99 | max |", "|---|---|---|---|---|---|---|---|"]
        for r in res["floor"]:
            lat = r["latency_ms"]
            lines.append(f"| {r['size']}×{r['size']} | {r['rate_hz']:g} Hz | {r.get('transport', 'tcp')} | "
                         f"{r['frames_in']} | {r['frames_lost']} | "
                         f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['max']:.2f} |")
        ratios = _ratios(res)
        if ratios:
            lines += ["", "Live p99 ÷ (floor p99 + engine step p99, one stream, front end on the GPU, graph on; "
                      "target ≤ 3): " + "; ".join(ratios)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
