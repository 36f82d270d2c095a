"""The service's latency mode (``serve --spin``) against the default, with the transport floor.

    python benchmarks/bench_spin.py [--seconds 10] [--rounds 3] [--rate 100]

In alternating rounds, one stream at ``--rate`` Hz (default model, 1 thread), latency from
each frame's due time to the subscriber (:func:`rtdenoise.bench.paced_load`, open loop):

- ``echo``: the floor, a bare ZeroMQ echo (SUB → PUB, no engine) in a process of its own;
- ``serve`` and ``serve --spin``: ``rtdenoise serve`` as its own process;
- ``demo`` and ``demo --spin``: the README's ``rtdenoise demo --rate 100`` (the service its own
  process, the simulated rig and the subscriber in the demo's);
- ``demo --in-process`` (and ``--spin``): the service in the demo's process too, its threads
  sharing Python's GIL with the rig and the subscriber.

Writes ``benchmarks/results/spin.{json,md}``: per mode the median over rounds of p50, p99
and p99.9, and every round's figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_latency import ServeProcess, free_port, run  # noqa: E402
from bench_quality import run_info  # noqa: E402

RESULTS = HERE / "results"
MODES = ("echo", "serve", "serve --spin", "demo", "demo --spin", "demo --in-process", "demo --in-process --spin")
_ECHO = "import sys, threading; sys.path.insert(0, {here!r}); import bench_latency as b; " \
        "b.echo_server({sub!r}, {pub!r}, threading.Event())"


def measure(mode: str, rate: float, seconds: float) -> dict:
    if mode == "echo":
        sub, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        proc = subprocess.Popen([sys.executable, "-c", _ECHO.format(here=str(HERE), sub=sub, pub=pub)])
        try:
            time.sleep(1.5)  # imports, binds
            return run(sub, pub, 1, rate, seconds)
        finally:
            proc.kill()
            proc.wait()
    if mode.startswith("serve"):
        srv = ServeProcess(*mode.split()[1:])
        try:
            return run(srv.sub, srv.pub, 1, rate, seconds)
        finally:
            srv.stop()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.json"
        cmd = [sys.executable, "-m", "rtdenoise.cli", "demo", "--rate", str(rate), "--seconds", str(seconds),
               "--quiet", "--plot", "", "--json", str(out), *mode.split()[1:]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())
        return {"frames_in": r["frames_in"], "frames_out": r["frames_out"], "frames_lost": r["frames_lost"],
                **r["latency_ms"], "stages_p50": r["latency_stages_ms_p50"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--out", default=str(RESULTS / "spin"))
    args = ap.parse_args(argv)
    rounds: list[dict] = []
    for k in range(args.rounds):
        order = MODES if k % 2 == 0 else MODES[::-1]
        rnd = {}
        for mode in order:
            rnd[mode] = measure(mode, args.rate, args.seconds)
            print(f"round {k + 1} {mode}: p50 {rnd[mode]['p50']:.3f} p99 {rnd[mode]['p99']:.3f} "
                  f"lost {rnd[mode]['frames_lost']}", file=sys.stderr, flush=True)
        rounds.append(rnd)
    summary = {m: {q: float(np.median([r[m][q] for r in rounds])) for q in ("p50", "p99", "p999", "max")}
               for m in MODES}
    for m in MODES:
        summary[m]["frames_lost"] = int(sum(r[m]["frames_lost"] for r in rounds))
    res = {**run_info(__file__, argv), "rate_hz": args.rate, "seconds": args.seconds, "summary": summary,
           "rounds": rounds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    s = res["summary"]
    lines = [
        f"# Latency mode (`--spin`) against the default, {res['rate_hz']:g} Hz, one stream",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        f"Median over {len(res['rounds'])} alternating rounds of {res['seconds']:g} s; latency from each frame's due "
        "time to the subscriber's receipt (ms), default model, 1 engine thread.",
        "",
        "| mode | p50 | p99 | p99.9 | max | frames lost |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {s[m]['p50']:.3f} | {s[m]['p99']:.3f} | {s[m]['p999']:.3f} | {s[m]['max']:.3f} | "
          f"{s[m]['frames_lost']} |" for m in MODES),
        "",
        "Every round (p50 / p99 ms):",
        "",
        "| round | " + " | ".join(MODES) + " |",
        "|---|" + "---|" * len(MODES),
        *(f"| {k + 1} | " + " | ".join(f"{r[m]['p50']:.2f} / {r[m]['p99']:.2f}" for m in MODES) + " |"
          for k, r in enumerate(res["rounds"])),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
