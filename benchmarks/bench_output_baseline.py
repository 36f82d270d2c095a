"""The spectral front end's output baseline: what each choice does, and what is left (drift).

    python benchmarks/bench_output_baseline.py   # writes benchmarks/results/output_baseline.{json,md}

Outside the subspace the network returns, a spectral model's output is its front end's
baseline. Three choices for that baseline, all with ``spectral-lag0``'s weights (no
retraining: the loss is on the subspace coefficients):

- ``running``: the running baseline ``b`` itself (a 150-frame mean; before ``slow_horizon``);
- ``slow + smoothed`` (shipped): a 1500-frame mean ``m`` plus ``b − m`` smoothed over 2 bins;
- ``slow + subspace``: ``m`` plus the part of ``b − m`` in the tracked subspace (not kept).

Scored on the quality benchmark's recordings (SNR of the spectra), on the seed chain's
recordings (the unmixed ACh trace's SNR), on those recordings bleaching (the clean signal
dimmed 20 % with a 10 min time constant, and 40 % with 3 min, new shot noise), and without
the detector's slow drift, beside causal PCA and the front end's ceiling (the clean signal
through it). And what the shipped choice costs per frame on the host.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import bench_seed_chain as chain  # noqa: E402
from bench_quality import recordings, run_info, write_results  # noqa: E402

from rtdenoise import baselines, metrics  # noqa: E402
from rtdenoise.denoise import denoise  # noqa: E402
from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.synth import DetectorConfig, DetectorNoise, SpectralConfig, simulate  # noqa: E402

MODEL = "spectral-lag0"
VARIANTS = ("running", "slow + smoothed", "slow + subspace")
SEED_CHAIN = {1500.0: 92_001, 300.0: 92_002, 3000.0: 92_003}  # bench_seed_chain's recordings
BLEACHES = {"20 %, 10 min": (0.2, 600.0), "40 %, 3 min": (0.4, 180.0)}


def variants(noisy: np.ndarray) -> dict[str, np.ndarray]:
    ck = load(MODEL)
    off = dataclasses.replace(ck.config, slow_horizon=0)
    running = denoise(noisy, model=dataclasses.replace(ck, config=off))
    shipped = denoise(noisy, model=ck)
    # slow + subspace: from the running output, b swapped for m + s·UUᵀ((b − m)/s)
    fe = off.frontend(1)
    norm = fe.normalize(np.asarray(noisy, np.float64)[None])
    b, s, u = norm.out_baseline[0], norm.out_scale[0], norm.out_basis[0].astype(np.float64)
    m = np.empty_like(b)
    acc = np.zeros(b.shape[1])
    for t, x in enumerate(np.asarray(noisy, np.float64)):
        acc += (x - acc) / min(t + 1, ck.config.slow_horizon)
        m[t] = acc
    d = (b - m) / s
    sub = running - b + m + s * np.einsum("twr,tr->tw", u, np.einsum("twr,tw->tr", u, d))
    return dict(zip(VARIANTS, (running, shipped, sub)))


def ceiling(rec: dict) -> np.ndarray:
    fe = load(MODEL).config.frontend(1)
    norm = fe.normalize(rec["noisy"][None])
    return fe.to_counts(fe.target((rec["clean"] + rec["static"])[None], norm), norm)[0]


def seed_recording(photons: float, *, drift: bool = True) -> dict:
    sig = SpectralConfig(decay_s=(chain.DECAY_S, chain.DECAY_S), state_level=(0.0, 0.0))
    det = DetectorConfig(read_noise=(8.0, 8.0), **({} if drift else {"drift": (0.0, 0.0)}))
    return simulate(3000, seed=SEED_CHAIN[photons], photons=photons, signal=sig, noise=DetectorNoise(det))


def bleached(rec: dict, depth: float, tau_s: float, seed: int) -> dict:
    t = np.arange(len(rec["clean"])) / float(rec["fs"])
    clean = rec["clean"] * ((1 - depth) + depth * np.exp(-t / tau_s))[:, None]
    det = DetectorNoise(DetectorConfig(read_noise=(8.0, 8.0)))
    noisy, static = det.sample(clean, np.random.default_rng(seed), fs=float(rec["fs"]))
    return {**rec, "clean": clean.astype(np.float32), "static": static.astype(np.float32), "noisy": noisy.astype(np.float32)}


def scores(rec: dict, ests: dict[str, np.ndarray]) -> dict[str, dict]:
    ref = rec["clean"] + rec["static"]
    out = {}
    for k, e in ests.items():
        row = {"snr_db": metrics.snr_db(e, ref)}
        if "activity" in rec:
            row["ach_snr_db"] = chain.trace_snr_db(chain.ach_trace(e, rec), rec["activity"])
        out[k] = row
    return out


def frontend_cost_us(slow_horizon: int, frames: int = 3000) -> dict:
    """Median and p99 µs of the host front end per frame (normalize and to_counts, one frame
    at a time as the live service steps), with and without the slow baseline."""
    import time

    cfg = dataclasses.replace(load(MODEL).config, slow_horizon=slow_horizon)
    x = seed_recording(1500.0)["noisy"][:frames, None, None].astype(np.float64)  # (T, 1, 1, W)
    fe = cfg.frontend(1)
    out = np.zeros((1, 1, cfg.rank), np.float32)
    times = []
    for f in x:
        t0 = time.perf_counter()
        fe.to_counts(out, fe.normalize(f))
        times.append(time.perf_counter() - t0)
    t = np.asarray(times[200:]) * 1e6
    return {"median_us": float(np.median(t)), "p99_us": float(np.percentile(t, 99))}


def main(argv: list[str] | None = None) -> int:
    res = {**run_info(__file__, argv), "model": MODEL, "quality": {}, "seed_chain": {}, "bleaching": {}, "no_drift": {}}
    res["cost"] = {"running": frontend_cost_us(0), "slow + smoothed": frontend_cost_us(load(MODEL).config.slow_horizon)}
    for name, rec in recordings().items():
        res["quality"][name] = scores(rec, variants(rec["noisy"]))
        print(name, file=sys.stderr, flush=True)
    for ph in SEED_CHAIN:
        rec = seed_recording(ph)
        res["seed_chain"][f"{ph:g} counts"] = scores(rec, variants(rec["noisy"]))
        for i, (bname, (depth, tau)) in enumerate(BLEACHES.items()):
            if ph == 3000.0:
                continue
            b = bleached(rec, depth, tau, seed=5 + i)
            res["bleaching"][f"{ph:g} counts, bleaching {bname}"] = scores(b, variants(b["noisy"]))
        for drift in (True, False):
            r = rec if drift else seed_recording(ph, drift=False)
            ests = {MODEL: denoise(r["noisy"], model=MODEL), "ceiling": ceiling(r),
                    "pca (causal, first 60 s)": baselines.pca_project(r["noisy"], rank=3, fit_frames=300)}
            res["no_drift"][f"{ph:g} counts, {'with' if drift else 'without'} drift"] = scores(r, ests)
        print(ph, file=sys.stderr, flush=True)
    print(write_results(HERE / "results" / "output_baseline", res, markdown))
    return 0


def _table(rows: dict, cols: tuple[str, ...], key: str) -> list[str]:
    lines = ["| recording | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c][key]:.2f}" for c in cols) + " |")
    return lines + [""]


def markdown(res: dict) -> str:
    return "\n".join([
        "# The spectral front end's output baseline (output_baseline)",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        f"`{res['model']}`'s weights throughout. `running`: the 150-frame running baseline (before); "
        "`slow + smoothed` (shipped): a 1500-frame mean plus the running baseline's departure from it smoothed "
        "over 2 bins; `slow + subspace`: that mean plus the departure's part in the tracked subspace (not kept).",
        "",
        "## Quality recordings: SNR of the spectra, dB", "",
        *_table(res["quality"], VARIANTS, "snr_db"),
        "## The seed chain's recordings: the unmixed ACh trace's SNR, dB", "",
        *_table(res["seed_chain"], VARIANTS, "ach_snr_db"),
        "## Bleaching: ACh trace SNR, dB", "",
        *_table(res["bleaching"], VARIANTS, "ach_snr_db"),
        "## Bleaching: SNR of the spectra, dB", "",
        *_table(res["bleaching"], VARIANTS, "snr_db"),
        "## What is left: the detector's drift (ACh trace SNR, dB)", "",
        "The same recordings drawn again without the detector's slow drift (everything else identical). "
        "`ceiling`: the clean signal through the front end, a perfect network's output.",
        "",
        *_table(res["no_drift"], (MODEL, "ceiling", "pca (causal, first 60 s)"), "ach_snr_db"),
        "## Cost: the host front end per frame (normalize + to_counts, one frame at a time), µs", "",
        "| output baseline | median | p99 |", "|---|---|---|",
        *(f"| {k} | {v['median_us']:.0f} | {v['p99_us']:.0f} |" for k, v in res["cost"].items()),
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
