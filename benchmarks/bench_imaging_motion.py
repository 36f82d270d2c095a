"""Imaging quality against rigid motion: where the models lose their margin.

    python benchmarks/bench_imaging_motion.py MODEL.pt [MODEL.pt ...] [--motion 0 0.25 0.5 1] [--seeds 1235 4235]

The held-out movies of ``bench_imaging_quality.py`` (128 × 128 px, 30 Hz, PMT noise, decay
2.5 s, 10 photons by default) with the rigid wander of the frame fixed at each ``--motion``
(std of the shift along each axis, px; the training draws span 0–1), for each scene seed.
SNR of the dynamic part (dB) of the causal Gaussian + EMA filter and the offline 3-D
Gaussian (each at its best against the ground truth) and of each model.

Motion is signal here: the clean movie moves, so a pixel at a soma's edge brightens and
dims with the wander, and an output must keep that to score. The models' front end holds
a per-pixel running baseline, which does not move with the frame.

A seed's scene is not the same at every motion: with motion the scene is drawn on a canvas
larger by a margin (its neurons included) and then cropped, so the rows of a seed differ in
more than motion; the means over seeds are the comparison.

Writes ``benchmarks/results/imaging_motion.{json,md}`` (``--name`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FILTERS = ("gaussian + ema (causal)", "gaussian + ema, registered (causal)", "gaussian 3-D (offline)")
CAUSAL = FILTERS[:2]  # the models' margins are over the better of these, movie by movie


def movie(photons: float, frames: int, seed: int, motion: float) -> dict:
    from rtdenoise.synth import ImagingConfig, simulate_movie

    cfg = ImagingConfig(fs=(30.0, 30.0), decay_s=(2.5, 2.5), rise_s=(0.08, 0.08), motion_px=(motion, motion))
    return simulate_movie(frames, seed=seed, shape=(128, 128), photons=photons, config=cfg)


def main(argv=None) -> int:
    from rtdenoise import baselines, metrics
    from rtdenoise.backends import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="imaging checkpoints (.pt) or shipped names")
    ap.add_argument("--motion", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], help="shift std per axis, px")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1235, 2235, 3235, 4235],
                    help="scene seeds (bench_imaging_quality's 10-photon movies)")
    ap.add_argument("--photons", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--name", default="imaging_motion", help="results file stem")
    args = ap.parse_args(argv)
    engines = {Path(m).stem: load_engine(m, backend="onnxruntime", threads=2) for m in args.models}
    rows = []
    for seed in args.seeds:
        for m in args.motion:
            mov = movie(args.photons, args.frames, seed, m)
            ref = mov["clean"] + mov["static"]
            table = baselines.movie_baseline_table(mov["noisy"], ref, motion=True)
            row = {"seed": seed, "motion_px": m, "neurons": len(mov["footprints"]),
                   **{k: table[k]["snr_db"] for k in FILTERS},
                   **{k: metrics.snr_db(e.run(mov["noisy"]), ref) for k, e in engines.items()}}
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), file=sys.stderr, flush=True)
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/bench_imaging_motion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "photons": args.photons, "frames": args.frames, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    names = [*FILTERS, *engines]
    best = lambda r: max(r[k] for k in CAUSAL)  # noqa: E731
    md = ["# Imaging quality against rigid motion", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          f"Held-out scenes as in `bench_imaging_quality.py` ({args.photons:g} photons, decay 2.5 s, {args.frames} frames), "
          "the frame's wander fixed at each shift std. SNR of the dynamic part, dB; the filters at their best. "
          "`registered`: the filter on the movie motion-corrected causally (the front end's registration); "
          "`best causal`: the better causal filter, movie by movie.", "",
          "| scene seed (neurons) | motion, px | " + " | ".join(names) + " | "
          + " | ".join(f"{k} − best causal" for k in engines) + " |",
          "|---|---|" + "---|" * (len(names) + len(engines))]
    for r in rows:
        md.append(f"| {r['seed']} ({r['neurons']}) | {r['motion_px']:g} | " + " | ".join(f"{r[k]:.2f}" for k in names) + " | "
                  + " | ".join(f"{r[k] - best(r):+.2f}" for k in engines) + " |")
    md += ["", "Means over the seeds, dB:", "", "| motion, px | " + " | ".join(names) + " | "
           + " | ".join(f"{k} − best causal" for k in engines) + " |",
           "|---|" + "---|" * (len(names) + len(engines))]
    for m in args.motion:
        sel = [r for r in rows if r["motion_px"] == m]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in names}
        margin = {k: sum(r[k] - best(r) for r in sel) / len(sel) for k in engines}
        md.append(f"| {m:g} | " + " | ".join(f"{mean[k]:.2f}" for k in names) + " | "
                  + " | ".join(f"{margin[k]:+.2f}" for k in engines) + " |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
