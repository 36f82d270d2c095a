"""Imaging quality on held-out synthetic movies: models against classical baselines.

    python benchmarks/bench_imaging_quality.py MODEL.pt [MODEL.pt ...] [--frames 300] [--name NAME]

Held-out movies (128 × 128 px, 30 Hz, two-photon PMT noise) are drawn with settings outside
the training draws where the physics allows: indicator decay 2.5 s (training: 0.05–2 s),
at a low (1 photon at the brightest somata) and a high (10 photons) level. For each, the
raw movie, the classical baselines at their best (parameters picked against the ground
truth: an optimistic yardstick) and each model are scored:

- SNR of the dynamic part (dB) and PSNR (dB) against ``clean + static``;
- per-neuron trace correlation with the ground truth (footprint-weighted means), averaged;
- on a pure-noise movie (uniform steady light, no neurons): the largest per-pixel temporal
  std of the output over the raw movie's median (below 1: nothing invented above the noise
  floor), and the largest deviation of a 5 × 5-smoothed output frame from its temporal mean,
  in units of the raw noise at that smoothing (a blob or transient would stand out).

Writes ``benchmarks/results/<name>.{json,md,png}`` (default name ``imaging_quality``).
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
LEVELS = {"low (1 photon)": 1.0, "high (10 photons)": 10.0}


def held_out(photons: float, frames: int, seed: int) -> dict:
    from rtdenoise.synth import ImagingConfig, simulate_movie

    cfg = ImagingConfig(fs=(30.0, 30.0), decay_s=(2.5, 2.5), rise_s=(0.08, 0.08))
    return simulate_movie(frames, seed=seed, shape=(128, 128), photons=photons, config=cfg)


def invented(model_out: np.ndarray, raw: np.ndarray) -> dict:
    """Pure noise in, what came out: fluctuation over the raw noise floor."""
    from scipy.ndimage import uniform_filter

    skip = 60  # the front end's baseline settles
    o, r = model_out[skip:].astype(np.float64), raw[skip:].astype(np.float64)
    std_ratio = float(o.std(axis=0).max() / np.median(r.std(axis=0)))
    so, sr = uniform_filter(o, size=(1, 5, 5)), uniform_filter(r, size=(1, 5, 5))
    dev = np.abs(so - so.mean(axis=0)).max() / np.median(sr.std(axis=0))
    return {"max_pixel_std_over_raw": std_ratio, "max_blob_dev_in_raw_sigma": float(dev)}


def score(est: np.ndarray, ref: np.ndarray, footprints: np.ndarray) -> dict:
    from rtdenoise import metrics

    corr = metrics.neuron_correlation(est, ref, footprints)
    return {"snr_db": metrics.snr_db(est, ref), "psnr_db": metrics.psnr_db(est, ref),
            "trace_corr": float(np.nanmean(corr))}


def main(argv=None) -> int:
    from rtdenoise import baselines
    from rtdenoise.backends import load_engine
    from rtdenoise.synth import pure_noise_movie

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="imaging checkpoints (.pt)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--name", default="imaging_quality", help="results file stem")
    args = ap.parse_args(argv)
    engines = {Path(m).stem: load_engine(m, backend="onnxruntime", threads=2) for m in args.models}
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/bench_imaging_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "models": {k: {"arch": e.config.arch, "lag": e.lag, "steps": e.checkpoint.provenance.get("steps"),
                          "minutes": round(e.checkpoint.provenance.get("wall_time_s", 0) / 60, 1)}
                      for k, e in engines.items()},
           "levels": {}}
    shown = {}
    for i, (level, photons) in enumerate(LEVELS.items()):
        mov = held_out(photons, args.frames, args.seed + i)
        ref = mov["clean"] + mov["static"]
        table = baselines.movie_baseline_table(mov["noisy"], ref)
        rows = {}
        for name, b in table.items():
            rows[name] = score(b["estimate"], ref, mov["footprints"]) | {"param": b["param"]}
        for name, eng in engines.items():
            out = eng.run(mov["noisy"])
            rows[name] = score(out, ref, mov["footprints"])
            shown.setdefault(level, {"noisy": mov["noisy"], "ref": ref, "foot": mov["footprints"], "fs": float(mov["fs"])})[name] = out
        res["levels"][level] = rows
        print(level, json.dumps({k: {m: round(v, 3) for m, v in r.items() if m != "param"} for k, r in rows.items()}),
              file=sys.stderr, flush=True)
    pure = pure_noise_movie(args.frames, seed=args.seed, shape=(128, 128), photons=5.0)
    res["pure_noise"] = {"raw": invented(pure["noisy"], pure["noisy"])}
    for name, eng in engines.items():
        res["pure_noise"][name] = invented(eng.run(pure["noisy"]), pure["noisy"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2, default=str))
    md = [f"# Imaging quality on held-out synthetic movies ({args.name})", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          "128 × 128 px, 30 Hz, PMT noise, indicator decay 2.5 s (outside the training draws). "
          "Baseline parameters picked against the ground truth.", ""]
    for k, m in res["models"].items():
        md.append(f"- `{k}`: {m['arch']}, lag {m['lag']}, {m['steps']} steps in {m['minutes']} min of CPU training")
    md.append("")
    for level, rows in res["levels"].items():
        md += [f"## {level}", "", "| | SNR dB | PSNR dB | trace corr | param |", "|---|---|---|---|---|"]
        for k, r in rows.items():
            md.append(f"| {k} | {r['snr_db']:.2f} | {r['psnr_db']:.2f} | {r['trace_corr']:.3f} | {r.get('param', '') or ''} |")
        md.append("")
    md += ["## Pure noise (uniform steady light, 5 photons)", "",
           "| | max pixel std ÷ raw median | max 5×5 blob deviation (raw σ) |", "|---|---|---|"]
    for k, r in res["pure_noise"].items():
        md.append(f"| {k} | {r['max_pixel_std_over_raw']:.2f} | {r['max_blob_dev_in_raw_sigma']:.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    _figure(shown, RESULTS / f"{args.name}.png")
    print("\n".join(md))
    return 0


def _figure(shown: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdenoise import metrics

    levels = list(shown)
    models = [k for k in shown[levels[0]] if k not in ("noisy", "ref", "foot", "fs")]
    cols = 2 + len(models)
    fig, axes = plt.subplots(2 * len(levels), cols, figsize=(3.2 * cols, 5.6 * len(levels)),
                             gridspec_kw={"height_ratios": [1.6, 1] * len(levels)})
    for li, level in enumerate(levels):
        d = shown[level]
        t = len(d["ref"]) // 2
        frames = [("noisy", d["noisy"][t]), *[(m, d[m][t]) for m in models], ("clean", d["ref"][t])]
        lo, hi = np.percentile(d["ref"][t], [1, 99.5])
        for ax, (title, img) in zip(axes[2 * li], frames):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{title}\n{level}", fontsize=8)
            ax.axis("off")
        traces = {k: metrics.neuron_traces(d[k], d["foot"][:3]) for k in ("noisy", "ref", *models)}
        tt = np.arange(len(d["ref"])) / d["fs"]
        for j, ax in enumerate(axes[2 * li + 1]):
            if j >= 3:
                ax.axis("off")
                continue
            ax.plot(tt, traces["noisy"][j], color="0.75", lw=0.6, label="noisy")
            for m in models:
                ax.plot(tt, traces[m][j], lw=0.9, label=m)
            ax.plot(tt, traces["ref"][j], color="k", lw=1.2, label="clean")
            ax.set_title(f"neuron {j}", fontsize=8)
            ax.set_xlabel("s", fontsize=8)
            if j == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
