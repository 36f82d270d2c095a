"""A long live run: the default imaging model through the service for minutes, every frame accounted for.

    python benchmarks/bench_live_long.py                          # 512 x 512 at 30 Hz for 10 minutes
    python benchmarks/bench_live_long.py --size 128 --rate 100 --minutes 2 --out /tmp/long

#11's first target asks for nothing lost over 10 minutes at 512 x 512 and 30 Hz, with p99 under
one frame period. A whole 10-minute movie would not fit in memory (18,000 frames: 9 GB of
uint16 in, 19 GB of float32 out), so a simulated two-photon movie of ``--loop`` seconds is
published over and over (``seq`` goes on) and only each frame's latency is kept
(``paced_load(frames=..., keep_outputs=False)``). The service is ``rtdenoise serve`` in its own
process, set as the demo sets it (2 engine threads, a queue of 100 frames, ``--warm-shape``).

Reports frames lost, latency percentiles over the whole run and per minute, the service's
resident memory each second, and a figure of latency and memory over time. Writes
``benchmarks/results/live_imaging_10min.{json,md,png}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_quality import run_info, write_results  # noqa: E402
from bench_soak import rss_kb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--loop", type=float, default=10.0, help="seconds of simulated movie, published in a loop")
    ap.add_argument("--out", default=str(HERE / "results" / "live_imaging_10min"))
    args = ap.parse_args(argv)

    from rtdenoise.bench import paced_load
    from rtdenoise.demo import DEFAULTS, ServiceProcess, _simulate
    from rtdenoise.model.checkpoint import DEFAULT_MODELS

    n = int(round(args.minutes * 60 * args.rate))
    _, movie, _ = _simulate("imaging", max(1, int(args.loop * args.rate)), seed=0,
                            photons=DEFAULTS["imaging"]["photons"], size=args.size)
    svc = ServiceProcess(model=DEFAULT_MODELS["imaging"], backend="auto", threads=2, spin=False, max_queue=100,
                         max_batch=1, warm_shapes=(movie.shape[1:],))  # one stream, as the demo
    rss: list[tuple[float, float]] = []  # (s since start, MiB)
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not done.wait(1.0):
            rss.append((time.monotonic() - t0, rss_kb(svc.proc.pid) / 1024))

    threading.Thread(target=sample, daemon=True).start()
    try:
        res = paced_load(svc.addresses["sub"], svc.addresses["pub"], {"long": movie}, rate=args.rate,
                         lag=svc.lag, frames=n, keep_outputs=False)
    finally:
        done.set()
        stats = svc.stop()
    e = res.e2e_ms["long"]
    lat = res.latency_summary()
    per_min = []
    per = int(round(60 * args.rate))
    for m in range(0, n, per):
        w = e[m : m + per]
        got = w[~np.isnan(w)]
        per_min.append({"minute": m // per + 1, "frames": len(w), "lost": int(np.isnan(w).sum()),
                        "p50": float(np.percentile(got, 50)) if got.size else None,
                        "p99": float(np.percentile(got, 99)) if got.size else None,
                        "max": float(got.max()) if got.size else None})
    period = 1e3 / args.rate
    s = stats.get("streams", {}).get("long", {})
    out = {
        **run_info(__file__, argv), "model": svc.model, "backend": svc.backend, "size": args.size, "rate_hz": args.rate,
        "minutes": args.minutes, "loop_s": args.loop, "frames_in": res.frames_in, "frames_out": res.frames_out,
        "frames_lost": res.frames_lost, "late_sends": res.late_sends,
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "p999", "max") if k in lat},
        "stages_p50_ms": lat["stages_p50"], "stages_p99_ms": lat["stages_p99"], "per_minute": per_min,
        "service": {k: s.get(k) for k in ("frames_in", "frames_out", "gaps", "dropped", "restarts")},
        "rss_mib": {"first": rss[0][1] if rss else None, "last": rss[-1][1] if rss else None,
                    "max": max(r for _, r in rss) if rss else None},
        "period_ms": period, "met": res.frames_lost == 0 and lat["p99"] <= period,
    }
    print(write_results(args.out, out, markdown))
    _plot(Path(args.out).with_suffix(".png"), e, args.rate, rss, period, out)
    return 0


def markdown(r: dict) -> str:
    lat = r["latency_ms"]
    lines = [
        f"# Live imaging for {r['minutes']:g} minutes: {r['size']}×{r['size']} uint16 at {r['rate_hz']:g} Hz",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Command: `{r['command']}`",
        "",
        f"The service as its own process (`rtdenoise serve`, {r['model']} on {r['backend']}, 2 threads, queue 100 "
        f"frames); a {r['loop_s']:g} s simulated two-photon movie published in a loop; latency from each frame's due "
        "time to the subscriber, ms.",
        "",
        "| frames in | out | lost | p50 | p90 | p99 | max | period | p99 ≤ period, nothing lost |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['frames_in']} | {r['frames_out']} | {r['frames_lost']} | {lat['p50']:.1f} | {lat['p90']:.1f} | "
        f"{lat['p99']:.1f} | {lat['max']:.1f} | {r['period_ms']:.1f} | {'yes' if r['met'] else '**no**'} |",
        "",
        "Stages, p50 / p99 ms: " + ", ".join(f"{k} {r['stages_p50_ms'][k]:.1f} / {r['stages_p99_ms'][k]:.1f}"
                                             for k in ("in", "service", "out")),
        f"(service: receipt to publish, queue and step). Service counters: {r['service']}. "
        f"Service memory: {r['rss_mib']['first']:.0f} MiB after 1 s, {r['rss_mib']['last']:.0f} at the end, "
        f"max {r['rss_mib']['max']:.0f}.",
        "",
        "| minute | frames | lost | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["per_minute"]:
        f = (lambda v: "–" if v is None else f"{v:.1f}")
        lines.append(f"| {m['minute']} | {m['frames']} | {m['lost']} | {f(m['p50'])} | {f(m['p99'])} | {f(m['max'])} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, e: np.ndarray, rate: float, rss: list, period: float, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(3, 1))
    t = np.arange(len(e)) / rate
    a.plot(t, e, ".", ms=1.5, color="C0")
    lost = np.isnan(e)
    if lost.any():
        a.plot(t[lost], np.full(lost.sum(), np.nanmax(e)), "|", color="C3", label="lost")
        a.legend(loc="upper right")
    a.axhline(period, color="k", lw=0.8, ls="--")
    a.text(0, period, " one frame period", va="bottom", fontsize=8)
    a.set_yscale("log")
    a.set_ylabel("latency, ms")
    a.set_title(f"{r['size']}×{r['size']} at {r['rate_hz']:g} Hz, {r['model']} on {r['backend']}: "
                f"lost {r['frames_lost']} of {r['frames_in']}, p99 {r['latency_ms']['p99']:.0f} ms")
    if rss:
        b.plot(*zip(*rss), color="C2")
    b.set_ylabel("service RSS, MiB")
    b.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
