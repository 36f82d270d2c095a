"""Self-supervised fine-tuning on a movie unlike the synthetic training draws: before and after.

    python benchmarks/bench_selfsup.py MODEL.pt [--movie scmos|pmt-adu] [--minutes 10] [--keep 0.8 ...] [--frames 900]

The movie (128 × 128 px, ``--frames`` frames) is drawn with settings outside the imaging
training ranges (``--movie``):

- ``scmos`` (default): an sCMOS camera instead of a two-photon PMT, 100 Hz (training
  10–90 Hz), 40 photons at the brightest somata (training 0.5–20), somata of 10–12 px
  radius (4–8), and fast 0.15 s decays;
- ``pmt-adu``: a two-photon movie as a digitizer writes it, 4 counts per photon (training:
  1, counts are photons), 5 photons at the brightest somata, 30 Hz, training-like scenes
  otherwise: a movie whose noise is twice what the front end expects of its counts;
- ``pmt-big``: a two-photon movie (PMT, 30 Hz, 5 photons) of somata of 10–12 px radius
  (training 4–8): tissue unlike the draws, at 1.4 photons per pixel per frame.

``rtdenoise train --self-supervised`` fine-tunes ``MODEL`` on the noisy movie alone for
``--minutes`` of this CPU (first setting it to the movie's counts per photon and dark level,
from the movie's photon transfer, then photon-splitting steps with the network shown
``--keep`` of the photons; several values: one fine-tune each); the model before, the model
set to the movie's counts alone (no step) and each fine-tuned one then denoise the whole
movie, scored against its ground truth (which the fine-tuning never sees) beside the raw
movie and the best causal classical baseline. Writes ``benchmarks/results/<name>.{json,md}``
(default ``selfsup``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from bench_imaging_quality import score  # noqa: E402

RESULTS = Path(__file__).parent / "results"


MOVIES = {"scmos": "sCMOS, 100 Hz, 40 photons, 10–12 px somata, 0.15 s decays",
          "pmt-adu": "two-photon PMT in digitizer counts (4 per photon), 30 Hz, 5 photons",
          "pmt-big": "two-photon PMT, 30 Hz, 5 photons, 10–12 px somata"}


def unlike_training(frames: int, seed: int, movie: str = "scmos") -> dict:
    from rtdenoise.synth import ImagingConfig, PMTNoise, SCMOSNoise, simulate_movie
    from rtdenoise.synth.noise import PMTConfig

    if movie == "pmt-big":
        return simulate_movie(frames, seed=seed, shape=(128, 128), photons=5.0,
                              config=ImagingConfig(fs=(30.0, 30.0), soma_radius_px=(10.0, 12.0), density=(4.0, 6.0)))
    if movie == "pmt-adu":
        return simulate_movie(frames, seed=seed, shape=(128, 128), photons=5.0, config=ImagingConfig(fs=(30.0, 30.0)),
                              noise=PMTNoise(PMTConfig(gain=(4.0, 4.0))))
    cfg = ImagingConfig(fs=(100.0, 100.0), soma_radius_px=(10.0, 12.0), density=(4.0, 6.0), decay_s=(0.15, 0.15),
                        rise_s=(0.01, 0.01))
    return simulate_movie(frames, seed=seed, shape=(128, 128), photons=40.0, config=cfg, noise=SCMOSNoise())


def main(argv=None) -> int:
    from rtdenoise import baselines
    from rtdenoise.backends import load_engine
    from rtdenoise.io import save_frames
    from rtdenoise.selfsup import SelfSupConfig, finetune

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the imaging checkpoint to start from")
    ap.add_argument("--movie", choices=list(MOVIES), default="scmos")
    ap.add_argument("--minutes", type=float, default=10.0, help="of fine-tuning, each (the target: 1 dB in 10 CPU minutes)")
    ap.add_argument("--frames", type=int, default=900)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--name", default="selfsup", help="results file stem")
    ap.add_argument("--keep", type=float, nargs="+", default=[SelfSupConfig.keep],
                    help="the share of the photons the network sees (several: one fine-tune each)")
    args = ap.parse_args(argv)
    mov = unlike_training(args.frames, args.seed, args.movie)
    ref = mov["clean"] + mov["static"]
    # Everything but the tuned model is scored first: a mistake shows before the minutes of training.
    rows = {"raw": score(mov["noisy"], ref, mov)}
    table = baselines.movie_baseline_table(mov["noisy"], ref)
    rows["gaussian + ema (causal, best on the ground truth)"] = score(
        table["gaussian + ema (causal)"]["estimate"], ref, mov) | {"param": table["gaussian + ema (causal)"]["param"]}
    rows["model, before fine-tuning"] = score(load_engine(args.model, backend="onnxruntime", threads=2).run(mov["noisy"]), ref, mov)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "movie.npy"
        save_frames(path, mov["noisy"])
        calibrated = finetune(Path(tmp) / "calibrated.pt", path, model=args.model, config=SelfSupConfig(minutes=0),
                              progress=False, command="bench_selfsup")
        rows["model, set to the movie's counts (photon transfer, no step)"] = score(
            load_engine(calibrated, backend="onnxruntime", threads=2).run(mov["noisy"]), ref, mov)
        runs = {}
        for keep in args.keep:
            t0 = time.perf_counter()
            tuned = finetune(Path(tmp) / "tuned.pt", path, model=args.model, progress=False, command="bench_selfsup",
                             config=SelfSupConfig(minutes=args.minutes, keep=keep, min_photons=0.0))
            s = tuned.provenance["self_supervised"]
            name = f"model, after {args.minutes:g} min photon splitting (keep {keep:g})"
            rows[name] = score(load_engine(tuned, backend="onnxruntime", threads=2).run(mov["noisy"]), ref, mov)
            runs[name] = {"keep": keep, "steps": s["steps"], "wall_s": time.perf_counter() - t0,
                          "val_before": s["val_loss_before"], "val_after": s["val_loss"]}
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/bench_selfsup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "units": {"gain": s["gain"], "offset": s["offset"], "photons": s["photons"]}, "finetunes": runs, "rows": rows,
           "gain_db": {n: rows[n]["snr_db"] - rows["model, before fine-tuning"]["snr_db"] for n in runs}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2, default=str))
    md = ["# Self-supervised fine-tuning on a movie unlike the training draws", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          f"{args.frames} frames of 128 × 128 px, {MOVIES[args.movie]}. "
          f"Fine-tuning: photon transfer {s['gain']:.3g} counts per photon above {s['offset']:.4g}, then "
          "photon-splitting steps: " + "; ".join(
              f"keep {r['keep']:g}: {r['steps']} steps in {r['wall_s'] / 60:.1f} min, validation loss "
              f"{r['val_before']:.4f} → {r['val_after']:.4f}" for r in runs.values()) + ". "
          f"The movie's mean light: {s['photons']:.2g} photons per pixel per frame"
          + (f" (below {SelfSupConfig.min_photons:g}: `rtdenoise train --self-supervised` would take no steps on it; "
             f"they are forced here to measure them)" if s["photons"] < SelfSupConfig.min_photons else "") + ".", "",
          "| | SNR dB | PSNR dB | trace corr |", "|---|---|---|---|"]
    md += [f"| {k} | {r['snr_db']:.2f} | {r['psnr_db']:.2f} | {r['trace_corr']:.3f} |" for k, r in rows.items()]
    md += [""] + [f"Gain from fine-tuning over the model before (keep {runs[n]['keep']:g}): {g:+.2f} dB SNR."
                  for n, g in res["gain_db"].items()]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
