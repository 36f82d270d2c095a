"""Where the calibration benchmark's rig costs SNR, part by part, and what no spectral denoiser can remove.

    python benchmarks/bench_rig_budget.py [--workdir /tmp/rtdenoise-rig]

``bench_calibrate.py``'s rig (:class:`RigNoise`) adds five kinds of noise to the detector's shot
noise. Here its held-out 2000-count recording (the same seed) is drawn again with one part
switched off at a time (the same draws, that part left out), and with all the structured parts
off, and denoised by the shipped ``spectral-lag0`` and, where ``--workdir`` holds them, the models
``bench_calibrate.py`` calibrated. Beside them:

- ``flicker kept``: the truth plus the LED flicker alone (the light's fluctuation, proportional to
  the signal), what a denoiser that removed everything else exactly and kept the flicker would
  give;
- the share of each fixed-shape part's spectrum (the flicker's is the mean clean spectrum; the
  pickup's and the banding's are the rig's) outside the directions the signal itself moves along
  (the sensor's ΔF signature, the HbO₂ and Hb absorption changes, the flat movement offset): the
  part a denoiser could tell from the signal by its shape alone;
- ``ceiling``: the clean signal through the shipped model's front end (no network on its
  coefficients can beat it);
- ``--oracle STEPS``: the shipped model calibrated as ``bench_calibrate.py`` does (same learning
  rate, seed, prior share 0.25), for STEPS steps, but on the rig's own noise process instead of
  its recorded dark and light frames: what calibration could gain with a perfect noise model
  (``oracle-STEPS.pt`` in ``--workdir``, made once; reused when present);
- ``--scratch MINUTES``: the shipped model's architecture trained from scratch on the rig's own
  noise process, as ``spectral-lag0`` was on its detector model (its learning rate, 28 minutes
  then): what the family can learn of the rig at all (``scratch-MINUTES.pt``, likewise);
  ``--taps N`` gives that model an output filter of N frames instead of the shipped 8
  (``scratch-MINUTES-tapsN.pt``).

Writes ``benchmarks/results/rig_budget.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_calibrate import FRAMES, RigNoise  # noqa: E402
from bench_quality import NO_STATES, run_info, write_results  # noqa: E402

from rtdenoise import metrics  # noqa: E402
from rtdenoise.denoise import denoise  # noqa: E402
from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.synth import SpectralConfig, simulate  # noqa: E402

SEED, PHOTONS = 91_001, 2000  # bench_calibrate.py's "rig, 2000 counts"
STRUCTURED = ("flicker", "correlated", "banding", "pickup")


def flicker(frames: int, fs: float, seed: int) -> np.ndarray:
    """The rig's LED flicker: AR(1), 2 s correlation time, unit variance (RigNoise's process)."""
    rng = np.random.default_rng(seed)
    a = np.exp(-1.0 / (2.0 * fs))
    e = rng.standard_normal(frames) * np.sqrt(1 - a * a)
    f = np.empty(frames)
    f[0] = rng.standard_normal()
    for i in range(1, frames):
        f[i] = a * f[i - 1] + e[i]
    return f


def outside_share(shape: np.ndarray, directions: np.ndarray) -> float:
    """The share of ``shape``'s energy outside the span of ``directions`` (columns)."""
    coef, *_ = np.linalg.lstsq(directions, shape, rcond=None)
    r = shape - directions @ coef
    return float(r @ r / (shape @ shape))


def oracle(steps: int, workdir: Path):
    """The shipped model calibrated on the rig's own noise process (bench_calibrate's recipe)."""
    from rtdenoise.train import TrainConfig, calibration_noise, train

    out = workdir / f"oracle-{steps}.pt"
    if out.exists():
        return load(out)
    init = load("spectral-lag0")
    cfg = TrainConfig(steps=steps, lr=TrainConfig().lr / 4, workers=1, seed=5)
    workdir.mkdir(parents=True, exist_ok=True)
    return train(out, init=init, signal=SpectralConfig(**NO_STATES), noise=calibration_noise(RigNoise(), init, 0.25),
                 config=cfg, progress=False, name=f"spectral-lag0 calibrated on the rig's noise process, {steps} steps")


def scratch(minutes: float, workdir: Path, taps: int = 0):
    """spectral-lag0's architecture (``taps`` frames of output filter, if given) trained from
    scratch on the rig's own noise process."""
    import dataclasses

    from rtdenoise.train import TrainConfig, train

    out = workdir / (f"scratch-{minutes:g}" + (f"-taps{taps}" if taps else "") + ".pt")
    if out.exists():
        return load(out)
    workdir.mkdir(parents=True, exist_ok=True)
    model = load("spectral-lag0").config
    return train(out, model=dataclasses.replace(model, taps=taps) if taps else model, signal=SpectralConfig(**NO_STATES), noise=RigNoise(),
                 config=TrainConfig(minutes=minutes, workers=1, seed=5), progress=False,
                 name=f"spectral-lag0's architecture trained on the rig's noise process, {minutes:g} min")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/rtdenoise-rig", help="bench_calibrate.py's workdir (its calibrated models)")
    ap.add_argument("--oracle", type=int, default=0, help="steps of calibration on the rig's own noise process (0: none)")
    ap.add_argument("--scratch", type=float, default=0, help="minutes of training from scratch on the rig's noise process (0: none)")
    ap.add_argument("--taps", type=int, default=0, help="with --scratch: its output filter's frames (0: the shipped model's)")
    ap.add_argument("--out", default=str(HERE / "results" / "rig_budget"))
    args = ap.parse_args(argv)
    models = {"shipped spectral-lag0": load("spectral-lag0")}
    for p in sorted(Path(args.workdir).glob("calibrated-*min-prior*.pt"), key=lambda p: float(p.stem.split("-")[1][:-3])):
        models[p.stem] = load(p)
    if args.oracle:
        models[f"oracle noise, {args.oracle} steps"] = oracle(args.oracle, Path(args.workdir))
    if args.scratch:
        taps = f", {args.taps} taps" if args.taps else ""
        models[f"from scratch on oracle noise, {args.scratch:g} min{taps}"] = scratch(args.scratch, Path(args.workdir), args.taps)
    cases = {"the rig": (), **{f"without {p}": (p,) for p in STRUCTURED}, "without any structured part": STRUCTURED}
    res = {**run_info(__file__, argv), "recording": f"rig, {PHOTONS} counts (seed {SEED})", "cases": {}}
    for name, off in cases.items():
        rec = simulate(FRAMES, seed=SEED, photons=PHOTONS, signal=SpectralConfig(**NO_STATES), noise=RigNoise(off=off))
        ref = rec["clean"] + rec["static"]
        row = {m: metrics.snr_db(denoise(rec["noisy"], model=ck), ref) for m, ck in models.items()}
        if not off:
            fe = models["shipped spectral-lag0"].config.frontend(1)
            norm = fe.normalize(rec["noisy"][None])
            row["ceiling"] = metrics.snr_db(fe.to_counts(fe.target(ref[None], norm), norm)[0], ref)
            kept = ref + 0.005 * flicker(len(ref), float(rec["fs"]), 0)[:, None] * np.maximum(rec["clean"], 0.0)
            row["flicker kept"] = metrics.snr_db(kept, ref)
            m = rec["clean"].mean(axis=0)
            dirs = np.stack([rec["signature"], rec["eps_hbo2"] * m, rec["eps_hb"] * m, np.ones_like(m)], axis=1)
            rig = RigNoise()
            res["outside_signal"] = {part: outside_share(shape, dirs) for part, shape in
                                     (("flicker", m), ("pickup", rig.pickup_shape), ("banding", rig.band))}
        res["cases"][name] = row
        print(name, {k: round(v, 2) for k, v in row.items()}, file=sys.stderr, flush=True)
    print(write_results(args.out, res, markdown))
    return 0


def markdown(res: dict) -> str:
    cases = res["cases"]
    models = [k for k in cases["the rig"] if k not in ("ceiling", "flicker kept")]
    base = cases["the rig"]
    lines = ["# The calibration rig's noise, part by part", "",
             f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
             f"Recording: {res['recording']}, as in `calibrate.md`, drawn again with parts of the rig's noise left out "
             "(the same draws otherwise). SNR of the spectra, dB.", "",
             "| noise | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for name, row in cases.items():
        cells = [f"{row[m]:.2f}" + ("" if name == "the rig" else f" ({row[m] - base[m]:+.2f})") for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"- Ceiling (the clean signal through the shipped model's front end): {base['ceiling']:.2f} dB.",
              f"- Flicker kept, everything else removed exactly: **{base['flicker kept']:.2f} dB**.",
              "- Share of each part's spectral shape outside the signal's own directions (ΔF signature, HbO₂, Hb, "
              "flat), what its shape alone tells apart: "
              + ", ".join(f"{k} **{100 * v:.1f} %**" for k, v in res["outside_signal"].items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
