"""Imaging quality on held-out synthetic movies: models against classical baselines.

    python benchmarks/bench_imaging_quality.py MODEL.pt [MODEL.pt ...] [--frames 600] [--name NAME]

Held-out movies (128 × 128 px, 30 Hz, two-photon PMT noise) are drawn with settings outside
the training draws where the physics allows: indicator decay 2.5 s (training: 0.05–2 s),
at a low (1 photon at the brightest somata) and a high (10 photons) level. For each, the
raw movie, the classical baselines at their best (parameters picked against the ground
truth: an optimistic yardstick) and each model are scored:

- SNR of the dynamic part (dB) and PSNR (dB) against ``clean + static``, and the SNR after
  the first 300 frames, when the models' running baseline has settled (before it, a
  per-pixel mean of few frames: at 1 photon most of the models' error);
- per-neuron trace correlation with the ground truth (footprint-weighted means), averaged;
- heights of spike-evoked transients (≥ 0.2 ΔF/F, no other event in the 0.5 s before) on
  the neuron traces against the clean ones: the share within 10 %;
- on a pure-noise movie (uniform steady light, no neurons): the largest per-pixel temporal
  std of the output over the raw movie's median (below 1: nothing invented above the noise
  floor), and the largest deviation of a 5 × 5-smoothed output frame from its temporal mean,
  in units of the raw noise at that smoothing (a blob or transient would stand out), and
  the transients found in 16 region traces (8 × 8 px) at each raw trace's own threshold;
- DeepCAD-RT, when ``bench_deepcad.py`` has denoised these same movies (its cache, ``--deepcad``);
- ``--more N`` further held-out movies per level (new scenes, same settings; default 3): SNR
  and trace correlation of the models and the classical filters on each, and their means. One
  movie is one draw of 10-35 neurons; a model's margin over a filter moved by more than 1 dB
  from one to the next at 1 photon, so a target is judged on the mean as well.

``--decay S`` draws the movies with another indicator decay (1.0 s: inside the training
draws, to see what the held-out movies' slow decay costs the models; DeepCAD-RT's cache is
for 2.5 s and is then left out).

``--unshrunk`` runs the models without the front end's shrinking of a cold baseline
(``frontend.shrink_baseline``): the A/B of it.

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


DECAY_S = 2.5  # the held-out movies' indicator decay: outside the training draws (0.05–2 s)


def held_out(photons: float, frames: int, seed: int, decay: float = DECAY_S) -> dict:
    from rtdenoise.synth import ImagingConfig, simulate_movie

    cfg = ImagingConfig(fs=(30.0, 30.0), decay_s=(decay, decay), rise_s=(0.08, 0.08))
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


def region_traces(movie: np.ndarray, size: int = 8, grid: int = 4) -> np.ndarray:
    """Mean traces of ``grid × grid`` square regions of ``size`` px spread over the frame: (n, T)."""
    h, w = movie.shape[1:]
    ys, xs = np.linspace(0, h - size, grid).astype(int), np.linspace(0, w - size, grid).astype(int)
    return np.stack([movie[:, y : y + size, x : x + size].mean(axis=(1, 2)) for y in ys for x in xs]).astype(np.float64)


def invented_transients(model_out: np.ndarray, raw: np.ndarray, fs: float) -> int:
    """Transients found in region traces of the output, each at its raw trace's threshold."""
    from rtdenoise import metrics

    skip = 60
    n = 0
    for r, o in zip(region_traces(raw[skip:]), region_traces(model_out[skip:])):
        d = np.diff(r)
        thr = 5 * 1.4826 * np.median(np.abs(d - np.median(d)))
        n += len(metrics.detect_events(o, fs=fs, threshold=thr))
    return n


def transients(est: np.ndarray, ref: np.ndarray, mov: dict, min_dff: float = 0.2) -> dict:
    """Heights of spike-evoked transients (no other event in the 0.5 s before, at least
    ``min_dff`` ΔF/F in the clean trace), estimate against clean: the share within 10 %."""
    from rtdenoise import metrics

    fs = float(mov["fs"])
    sep = int(round(fs / 2))
    t_ref, t_est = metrics.neuron_traces(ref, mov["footprints"]), metrics.neuron_traces(est, mov["footprints"])
    rel = []
    for n, sp in enumerate(mov["spikes"]):
        onsets = [int(t) for t in np.flatnonzero(sp) if 60 <= t <= len(sp) - 2 * sep and not sp[t - sep : t].any()]
        if not onsets:
            continue
        a_ref = metrics.event_amplitudes(t_ref[n], onsets, fs=fs)
        a_est = metrics.event_amplitudes(t_est[n], onsets, fs=fs)
        before = np.array([t_ref[n][t - 2 : t].mean() for t in onsets])
        big = a_ref >= min_dff * before
        rel += list(np.abs(a_est[big] - a_ref[big]) / a_ref[big])
    if not rel:
        return {"events": 0, "within_10pct": None, "median_rel_error": None}
    rel = np.asarray(rel)
    return {"events": len(rel), "within_10pct": float(np.mean(rel <= 0.10)), "median_rel_error": float(np.median(rel))}


SETTLED = 300  # frames: the imaging models' running baseline spans this many (10 s at 30 Hz), cold before


def score(est: np.ndarray, ref: np.ndarray, mov: dict) -> dict:
    from rtdenoise import metrics

    corr = metrics.neuron_correlation(est, ref, mov["footprints"])
    return {"snr_db": metrics.snr_db(est, ref), "psnr_db": metrics.psnr_db(est, ref),
            "snr_db_settled": metrics.snr_db(est[SETTLED:], ref[SETTLED:]) if len(est) > SETTLED else float("nan"),
            "trace_corr": float(np.nanmean(corr)), "transients": transients(est, ref, mov)}


def deepcad_result(cache: Path, level: str, photons: float, frames: int, seed: int) -> tuple[str, np.ndarray] | None:
    """DeepCAD-RT's output for this held-out movie from ``bench_deepcad.py``'s cache, if it made one."""
    from bench_deepcad import slug

    npz, side = cache / f"{slug(level)}.npz", cache / f"{slug(level)}.json"
    if not (npz.exists() and side.exists()):
        return None
    meta = json.loads(side.read_text())
    c = meta["config"]
    if (c["photons"], c["frames"], c["seed"]) != (photons, frames, seed):
        return None
    name = f"DeepCAD-RT (offline, {meta['latency_frames']} frames ahead, {meta['train_s'] / 60:.0f} min)"
    return name, np.load(npz)["denoised"]


def run_model(eng, movie: np.ndarray, *, shrink: bool = True) -> np.ndarray:
    """``eng.run(movie)``, or with the front end's cold-baseline shrinking off (``--unshrunk``, the A/B)."""
    if shrink:
        return eng.run(movie)
    st = eng.new_state(1, movie.shape[1:])
    st.frontend.shrink = False
    out = [eng.step(movie[i : i + 50], st) for i in range(0, len(movie), 50)] + [eng.flush(st)]
    return np.concatenate(out)[eng.lag :]


def main(argv=None) -> int:
    from rtdenoise import baselines
    from rtdenoise.backends import load_engine
    from rtdenoise.synth import ImagingConfig, pure_noise_movie

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="imaging checkpoints (.pt)")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--name", default="imaging_quality", help="results file stem")
    ap.add_argument("--more", type=int, default=3, help="further held-out movies per level, scored on SNR and trace corr (0: none)")
    ap.add_argument("--decay", type=float, default=DECAY_S,
                    help="the movies' indicator decay, s (default 2.5, outside the training draws; 1.0 is inside them)")
    ap.add_argument("--unshrunk", action="store_true",
                    help="models without the front end's shrinking of a cold baseline (the A/B of frontend.shrink_baseline)")
    ap.add_argument("--deepcad", type=Path, default=Path.home() / ".cache" / "rtdenoise-bench" / "deepcad",
                    help="bench_deepcad.py's cache: DeepCAD-RT's outputs for these movies are scored too when there")
    args = ap.parse_args(argv)
    engines = {Path(m).stem: load_engine(m, backend="onnxruntime", threads=2) for m in args.models}
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/bench_imaging_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "models": {k: {"arch": e.config.arch, "lag": e.lag, "steps": e.checkpoint.provenance.get("steps"),
                          "minutes": round(e.checkpoint.provenance.get("wall_time_s", 0) / 60, 1),
                          "machine": e.checkpoint.provenance.get("machine", "")}
                      for k, e in engines.items()},
           "levels": {}}
    shown, first = {}, {}  # first: each level's movie and its scores, the first of --more's
    for i, (level, photons) in enumerate(LEVELS.items()):
        mov = held_out(photons, args.frames, args.seed + i, args.decay)
        ref = mov["clean"] + mov["static"]
        table = baselines.movie_baseline_table(mov["noisy"], ref, motion=True)
        rows = {}
        for name, b in table.items():
            rows[name] = score(b["estimate"], ref, mov) | {"param": b["param"]}
        shown[level] = {"noisy": mov["noisy"], "ref": ref, "foot": mov["footprints"], "fs": float(mov["fs"])}
        first[level] = (mov, rows)
        for name, eng in engines.items():
            out = run_model(eng, mov["noisy"], shrink=not args.unshrunk)
            rows[name] = score(out, ref, mov)
            shown[level][name] = out
        dc = deepcad_result(args.deepcad, level, photons, args.frames, args.seed + i) if args.decay == DECAY_S else None
        if dc is not None:
            rows[dc[0]] = score(dc[1], ref, mov)
            shown[level]["DeepCAD-RT"] = dc[1]
        res["levels"][level] = rows
        print(level, json.dumps({k: {m: round(v, 3) for m, v in r.items() if m not in ("param", "transients")} for k, r in rows.items()}),
              file=sys.stderr, flush=True)
    res["more"] = more_movies(engines, args.frames, args.seed, args.more, first, shrink=not args.unshrunk,
                              decay=args.decay) if args.more else {}
    pure = pure_noise_movie(args.frames, seed=args.seed, shape=(128, 128), photons=5.0)
    fs = float(pure["fs"])
    res["pure_noise"] = {"raw": invented(pure["noisy"], pure["noisy"]) | {"transients": invented_transients(pure["noisy"], pure["noisy"], fs)}}
    t_pure = args.frames // 2
    shown_pure = {"noisy": pure["noisy"][t_pure]}  # the figure's last row: one frame of each
    for name, eng in engines.items():
        out = run_model(eng, pure["noisy"], shrink=not args.unshrunk)
        res["pure_noise"][name] = invented(out, pure["noisy"]) | {"transients": invented_transients(out, pure["noisy"], fs)}
        shown_pure[name] = out[t_pure]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2, default=str))
    drawn = ImagingConfig().decay_s  # the training draws' indicator decays, s
    md = [f"# Imaging quality on held-out synthetic movies ({args.name})", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          f"128 × 128 px, 30 Hz, PMT noise, indicator decay {args.decay:g} s "
          f"({'**inside**' if min(drawn) <= args.decay <= max(drawn) else 'outside'} the training draws). "
          "Baseline parameters picked against the ground truth."
          + (" **Models without the front end's shrinking of a cold baseline** (`--unshrunk`)." if args.unshrunk else ""), ""]
    for k, m in res["models"].items():
        md.append(f"- `{k}`: {m['arch']}, lag {m['lag']}, {m['steps']} steps in {m['minutes']} min of training"
                  + (f" ({m['machine']})" if m.get("machine") else ""))
    md.append("")
    for level, rows in res["levels"].items():
        md += [f"## {level}", "", f"| | SNR dB | SNR dB after frame {SETTLED} | PSNR dB | trace corr "
               "| transients within 10 % (median error, n) | param |", "|---|---|---|---|---|---|---|"]
        for k, r in rows.items():
            tr = r["transients"]
            ev = "-" if tr["within_10pct"] is None else f"{tr['within_10pct']:.0%} ({tr['median_rel_error']:.0%}, n={tr['events']})"
            md.append(f"| {k} | {r['snr_db']:.2f} | {r['snr_db_settled']:.2f} | {r['psnr_db']:.2f} | {r['trace_corr']:.3f} | {ev} | {r.get('param', '') or ''} |")
        md.append("")
    md += _more_md(res["more"])
    md += ["## Pure noise (uniform steady light, 5 photons)", "",
           "| | max pixel std ÷ raw median | max 5×5 blob deviation (raw σ) | transients in 16 regions |", "|---|---|---|---|"]
    for k, r in res["pure_noise"].items():
        md.append(f"| {k} | {r['max_pixel_std_over_raw']:.2f} | {r['max_blob_dev_in_raw_sigma']:.2f} | {r['transients']} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    _figure(shown, shown_pure, RESULTS / f"{args.name}.png")
    print("\n".join(md))
    return 0


MORE_SEED = 1000  # the k-th further movie of level i has seed --seed + MORE_SEED·k + i
CLASSICAL = ("gaussian + ema (causal)", "gaussian + ema, registered (causal)", "gaussian 3-D (offline)")


def more_movies(engines: dict, frames: int, seed: int, n: int, first: dict, *, shrink: bool = True,
                decay: float = DECAY_S) -> dict:
    """SNR and trace corr of raw, the classical filters at their best and each model on the
    tables' movie of each level (``first``: level -> its movie and scored rows, as ``main``
    made them) and ``n`` further held-out movies."""
    from rtdenoise import baselines, metrics

    out = {}
    for i, (level, photons) in enumerate(LEVELS.items()):
        names = ["raw", *CLASSICAL, *engines]
        mov, scored = first[level]
        rows = {k: {m: [scored[k][m]] for m in ("snr_db", "snr_db_settled", "trace_corr")} for k in names}
        seeds = [seed + i] + [seed + MORE_SEED * k + i for k in range(1, n + 1)]
        scenes = [_scene(mov)]
        for s in seeds[1:]:
            mov = held_out(photons, frames, s, decay)
            scenes.append(_scene(mov))
            ref = mov["clean"] + mov["static"]
            table = baselines.movie_baseline_table(mov["noisy"], ref, motion=True)
            ests = {"raw": table["raw"]["estimate"], **{k: table[k]["estimate"] for k in CLASSICAL}}
            ests |= {name: run_model(eng, mov["noisy"], shrink=shrink) for name, eng in engines.items()}
            for name, est in ests.items():
                rows[name]["snr_db"].append(metrics.snr_db(est, ref))
                rows[name]["snr_db_settled"].append(metrics.snr_db(est[SETTLED:], ref[SETTLED:]))
                rows[name]["trace_corr"].append(float(np.nanmean(metrics.neuron_correlation(est, ref, mov["footprints"]))))
        out[level] = {"seeds": seeds, "scenes": scenes, "rows": rows}
        print(level, "more movies", json.dumps({k: round(float(np.mean(r["snr_db"])), 2) for k, r in rows.items()}),
              file=sys.stderr, flush=True)
    return out


def _scene(mov: dict) -> dict:
    return {"neurons": len(mov["footprints"]), "motion_px": float(np.asarray(mov["shifts"]).std(axis=0).mean())}


def _more_md(more: dict) -> list[str]:
    if not more:
        return []
    md = []
    for level, d in more.items():
        rows = d["rows"]
        md += [f"## {level}: {len(d['seeds'])} held-out movies (seeds {', '.join(map(str, d['seeds']))})", "",
               "The first movie is the one above. SNR dB of each movie, then the mean; the mean after frame "
               f"{SETTLED} (the running baseline settled); trace corr, mean.", "",
               "| | " + " | ".join(f"movie {j + 1}" for j in range(len(d["seeds"])))
               + f" | mean SNR dB | mean after frame {SETTLED} | mean trace corr |",
               "|---|" + "---|" * (len(d["seeds"]) + 3),
               "| *neurons* | " + " | ".join(str(c["neurons"]) for c in d["scenes"]) + " | | | |",
               "| *motion, px (shift std)* | " + " | ".join(f"{c['motion_px']:.2f}" for c in d["scenes"]) + " | | | |"]
        for k, r in rows.items():
            md.append(f"| {k} | " + " | ".join(f"{v:.2f}" for v in r["snr_db"]) + f" | **{np.mean(r['snr_db']):.2f}** | "
                      f"{np.mean(r['snr_db_settled']):.2f} | {np.mean(r['trace_corr']):.3f} |")
        md.append("")
        for k in rows:
            if k == "raw" or k in CLASSICAL:
                continue
            for c in CLASSICAL:
                for m, what in (("snr_db", ""), ("snr_db_settled", f" after frame {SETTLED}")):
                    diff = np.asarray(rows[k][m]) - np.asarray(rows[c][m])
                    md.append(f"- `{k}` − {c}{what}: {', '.join(f'{v:+.2f}' for v in diff)} dB (mean {diff.mean():+.2f})")
        md.append("")
    return md


def _figure(shown: dict, pure: dict, path: Path) -> None:
    """Per level a frame of the noisy movie, each model, DeepCAD-RT where there, and the clean one,
    and three neurons' traces; then a pure-noise frame, raw and each model's, on one grey scale (a
    blob a model invents would show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdenoise import metrics

    levels = list(shown)
    models = [k for k in shown[levels[0]] if k not in ("noisy", "ref", "foot", "fs")]
    if any(m not in shown[lv] for lv in levels for m in models):  # DeepCAD-RT for one level only
        models = [m for m in models if all(m in shown[lv] for lv in levels)]
    cols = 2 + len(models)
    fig, axes = plt.subplots(2 * len(levels) + 1, cols, figsize=(3.2 * cols, 5.6 * len(levels) + 3.2),
                             gridspec_kw={"height_ratios": [1.6, 1] * len(levels) + [1.6]})
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
    lo, hi = np.percentile(pure["noisy"], [1, 99.5])
    for j, ax in enumerate(axes[-1]):
        ax.axis("off")
        if j < len(pure):
            title, img = list(pure.items())[j]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{title}\npure noise (steady uniform light)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
