"""Latency before and after a change, on the same machine in one run.

    python benchmarks/bench_ab.py --before REV [--after WORKTREE] [--seconds 10] [--rounds 3]

Checks ``REV`` out into a temporary git worktree and measures it and the working tree
alternately (before, after, before, after, ...), each in a fresh process with its own
``src`` first on ``PYTHONPATH``, so drift of the machine hits both alike:

1. the engine's 1-frame step of the default model, in-process, on torch and on ONNX Runtime
   (3000 steps after 300 of warm-up; median and p99 ms);
2. the live service end to end: ``rtdenoise serve`` (default model, backend auto, 1 thread)
   fed by :func:`rtdenoise.bench.paced_load` at 100 Hz and 1000 Hz for ``--seconds`` each
   (median and p99 ms from each frame's due time; frames lost).

The child uses only APIs that both sides have (``load_engine``, ``paced_load``,
``simulate``, ``rtdenoise.stream.control``, ``python -m rtdenoise.cli serve``). Each figure is
the median over rounds. Writes ``benchmarks/results/ab_latency.{json,md}`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RATES = (100.0, 1000.0)


# ----------------------------------------------------------------------------- child: measure one tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_ms(backend: str) -> dict:
    from rtdenoise.backends import load_engine
    from rtdenoise.synth import simulate

    eng = load_engine(None, backend=backend, threads=1)
    x = simulate(3300, seed=3, photons=2000)["noisy"]
    st = eng.new_state(1)
    times = []
    for i in range(len(x)):
        t = time.perf_counter()
        eng.step(x[i : i + 1], st)
        times.append((time.perf_counter() - t) * 1e3)
    t = np.asarray(times[300:])
    return {"p50": float(np.median(t)), "p99": float(np.percentile(t, 99))}


def _service(seconds: float) -> dict:
    from rtdenoise.bench import paced_load
    from rtdenoise.stream import control
    from rtdenoise.synth import simulate

    import tempfile

    sub, pub = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(2))
    ctl = f"ipc://{tempfile.mkdtemp(prefix='rtd-ab-')}/control"  # plaintext TCP control needs a flag since 12F
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdenoise.cli", "serve", "--bind-sub", "--sub", sub, "--pub", pub, "--control", ctl,
         "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()  # one line when ready
    if proc.poll() is not None:
        raise RuntimeError(f"serve failed to start: {line}{proc.stdout.read()}")
    out = {}
    try:
        for rate in RATES:
            n = int(rate * seconds)
            base = simulate(min(n, 3000), seed=100, photons=2000)["noisy"]
            frames = np.tile(base, (-(-n // len(base)), 1))[:n]
            res = paced_load(sub, pub, {"ab": frames}, rate=rate, fs=5.0)  # frames into its sub, out of its pub
            s = res.latency_summary()
            out[f"{rate:g}hz"] = {"p50": s["p50"], "p99": s["p99"], "lost": res.frames_lost}
    finally:
        try:
            control(ctl, "stop", timeout=5.0)
        except Exception:  # noqa: BLE001 - a dead service is stopped already
            proc.terminate()
        proc.wait(10)
    return out


def child(seconds: float) -> None:
    import rtdenoise

    res = {"src": str(Path(rtdenoise.__file__).parent)}
    for b in ("torch", "onnxruntime"):
        res[f"step_{b}"] = _step_ms(b)
    res["service"] = _service(seconds)
    print(json.dumps(res))


# ----------------------------------------------------------------------------- parent: alternate trees


def _measure(src: Path, seconds: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    p = subprocess.run([sys.executable, __file__, "--child", "--seconds", str(seconds)], env=env, cwd=tempfile.gettempdir(),
                       capture_output=True, text=True, check=False)
    if p.returncode:
        raise RuntimeError(f"measuring {src} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if Path(res["src"]).resolve() != (src / "rtdenoise").resolve():
        raise RuntimeError(f"the child imported {res['src']}, not {src}")
    return res


def _flatten(r: dict) -> dict[str, float]:
    out = {f"engine {b} 1-frame step {q} ms": r[f"step_{b}"][q] for b in ("torch", "onnxruntime") for q in ("p50", "p99")}
    for rate, v in r["service"].items():
        out.update({f"service {rate} {q} ms": v[q] for q in ("p50", "p99")})
        out[f"service {rate} frames lost"] = v["lost"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="git revision to compare against (checked out in a temporary worktree)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per service rate")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.seconds)
        return 0
    if not args.before:
        ap.error("--before REV is required")
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    after_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="rtdenoise-ab-") as tmp:
        wt = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), rev], cwd=ROOT, check=True, capture_output=True)
        try:
            runs = {"before": [], "after": []}
            for i in range(args.rounds):
                for side, src in (("before", wt / "src"), ("after", ROOT / "src")):
                    runs[side].append(_flatten(_measure(src, args.seconds)))
                    print(f"round {i + 1} {side}: {json.dumps(runs[side][-1])}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False, capture_output=True)
    keys = list(runs["after"][0])
    med = {side: {k: float(np.median([r[k] for r in rs])) for k in keys} for side, rs in runs.items()}
    res = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "before": rev, "after": f"{after_rev} + working tree",
        "command": "python benchmarks/bench_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "median": med, "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ab_latency.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# Latency before ({rev}) and after ({after_rev}), one run on one machine",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        f"Median of {args.rounds} alternating rounds; default model, 1 thread; the service at each rate for {args.seconds:g} s.",
        "",
        "| figure | before | after | after ÷ before |",
        "|---|---|---|---|",
    ]
    for k in keys:
        b, a = med["before"][k], med["after"][k]
        ratio = f"{a / b:.2f}" if b else "-"
        lines.append(f"| {k} | {b:.3f} | {a:.3f} | {ratio} |" if "ms" in k else f"| {k} | {b:g} | {a:g} | - |")
    (RESULTS / "ab_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
