"""Live imaging through the service: a simulated rig's uint16 frames, the shipped imaging model.

    python benchmarks/bench_live_imaging.py [--seconds 30] [--spin]

Runs ``rtdenoise demo --modality imaging`` (the service as its own process, onnxruntime with
2 threads, open-loop paced publisher, latency from each frame's due time to the subscriber),
each case in a fresh process, for the issue's two cases, 512 × 512 at 30 Hz and 128 × 128 at 100 Hz; then, per case, the
transport floor (a bare ZeroMQ echo, ``bench_gpu.floor_case``) and the engine step's p99, for
the issue's ratio. Writes ``benchmarks/results/live_imaging.{json,md}`` with the machine. The targets (#11): nothing
lost; p99 under one frame period (33 ms) at 512 × 512, 30 Hz; p99 ≤ 15 ms at 128 × 128, 100 Hz.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_gpu import floor_case  # noqa: E402
from bench_quality import run_info, write_results  # noqa: E402

RESULTS = HERE / "results"
CASES = [(512, 30.0, 33.3), (128, 100.0, 15.0)]  # size, rate Hz, p99 target ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--spin", action="store_true", help="the service's latency mode")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds between cases")
    ap.add_argument("--out", default=None, help="default results/live_imaging, or live_imaging_spin with --spin")
    args = ap.parse_args(argv)
    runs = []
    for k, (size, rate, target) in enumerate(CASES):
        if k:  # after the 512 × 512 case the machine needs a while: see _case
            time.sleep(args.settle)
        r = _case(size, rate, args.seconds, args.spin)
        r["p99_target_ms"] = target
        r["met"] = r["frames_lost"] == 0 and r["latency_ms"]["p99"] <= target
        # The ratio: live p99 ÷ (the transport floor's p99 + the engine step's p99), same run
        time.sleep(min(args.settle, 5.0))
        r["floor"] = floor_case(size, rate, min(args.seconds, 10.0))
        r["step_p99_ms"] = _step_p99(size, r["backend"])
        r["ratio"] = r["latency_ms"]["p99"] / (r["floor"]["latency_ms"]["p99"] + r["step_p99_ms"])
        runs.append(r)
        print(f"{size}x{size} at {rate:g} Hz: lost {r['frames_lost']}, p50 {r['latency_ms']['p50']:.1f} "
              f"p99 {r['latency_ms']['p99']:.1f} ms; floor p99 {r['floor']['latency_ms']['p99']:.1f}, "
              f"step p99 {r['step_p99_ms']:.1f}, ratio {r['ratio']:.1f}", file=sys.stderr, flush=True)
    res = {**run_info(__file__, argv), "runs": runs}
    print(write_results(args.out or str(RESULTS / ("live_imaging_spin" if args.spin else "live_imaging")), res, markdown))
    return 0


def _step_p99(size: int, backend: str, steps: int = 200) -> float:
    """p99 ms of the shipped model's 1-frame ``engine.step`` at ``size``², as the live service ran it."""
    import numpy as np

    from rtdenoise.backends import load_engine

    eng = load_engine("imaging-lag0", backend=backend, threads=2)
    x = np.random.default_rng(0).poisson(20, (16, size, size)).astype("<u2")
    st, times = eng.new_state(1, (size, size)), []
    for i in range(steps + 20):
        t = time.perf_counter()
        eng.step(x[i % 16 : i % 16 + 1], st)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times[20:], 99))


def _case(size: int, rate: float, seconds: float, spin: bool) -> dict:
    """One case in a fresh process (`rtdenoise demo`). A 128 × 128 case run right after the
    512 × 512 one read p99 24 to 440 ms in the same process and 17 to 509 ms in a fresh one,
    against 7 to 11 ms on its own, and 7.6 ms 15 s after a 512 × 512 run (the cause, in the
    machine after gigabytes of movie were freed, was not pinned down): so each case runs in a
    fresh process, ``--settle`` seconds after the one before."""
    with tempfile.TemporaryDirectory(prefix="rtdenoise-live-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "rtdenoise.cli", "demo", "--modality", "imaging", "--size", str(size),
               "--rate", str(rate), "--seconds", str(seconds), "--json", str(out), "--plot", "", "--quiet",
               *(["--spin"] if spin else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"the demo failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def markdown(res: dict) -> str:
    lines = [
        "# Live imaging through the service (simulated two-photon rig, uint16 frames)",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        "The service as its own process (`rtdenoise serve`, the shipped imaging model, onnxruntime, 2 threads);",
        "latency from each frame's due time to the subscriber (ms); SNR of the dynamic part against the truth.",
        "",
        "| frames | rate | frames in | lost | p50 | p99 | p99.9 | max | p99 target | SNR raw → denoised | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lat = r["latency_ms"]
        lines.append(f"| {'×'.join(map(str, r['shape']))} {r['dtype']} | {r['rate_hz']:g} Hz | {r['frames_in']} | "
                     f"{r['frames_lost']} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['p999']:.1f} | {lat['max']:.1f} | "
                     f"{r['p99_target_ms']:g} | {r['snr_db']['raw']:.1f} → {r['snr_db']['denoised']:.1f} dB | "
                     f"{'yes' if r['met'] else '**no**'} |")
    lines += ["", "The issue's ratio, measured in the same run: live p99 ÷ (p99 of a bare ZeroMQ echo of the same frames",
              "at the same rate + p99 of the shipped model's one-frame `engine.step` at that size, 2 threads); target ≤ 3.",
              "", "| frames | floor p99 ms | step p99 ms | live p99 ms | ratio | met |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if "ratio" in r:
            lines.append(f"| {'×'.join(map(str, r['shape']))} | {r['floor']['latency_ms']['p99']:.2f} | "
                         f"{r['step_p99_ms']:.2f} | {r['latency_ms']['p99']:.1f} | {r['ratio']:.1f} | "
                         f"{'yes' if r['ratio'] <= 3 else '**no**'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
