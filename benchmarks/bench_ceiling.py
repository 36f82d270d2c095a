"""Where the subspace model's error comes from: ceilings of the causal front end, and how far
any linear causal filter on its coefficients gets (#13's margin over causal PCA).

    python benchmarks/bench_ceiling.py   # writes benchmarks/results/ceiling.md

On the quality benchmark's recordings, with the front end run on the noisy frames:

- ``oracle``: the *clean* signal projected onto the running subspace — the best any
  network on these coefficients could do (what the subspace misses of the signal);
- ``top-k``: the noisy frames projected onto the first k tracked directions, no network;
- for a covariance horizon of 300 and 1000 frames.

Then, with the shipped ``spectral-lag0``'s own front end, the best *linear* causal filter on
its coefficients: each output coefficient a least-squares combination of all of them over
the last L frames, fitted to the clean target **with the ground truth**. Fitted on the very
frames it is scored on (in-sample, the most any such filter can reach, noise fitting
included) and fitted on one half, scored on the other (2-fold). And the same filters on
the true signal subspace (the top 3 directions of the clean recording, an offline oracle
no causal method has), to show what the subspace estimate costs. Last, the same filters on
the coefficients of a front end that puts hemoglobin's absorption spectra in the subspace
(``ModelConfig(hemoglobin=...)``, physics instead of estimation; no model needed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine, recordings, sensor_spectrum  # noqa: E402

from rtdenoise import baselines, metrics  # noqa: E402
from rtdenoise.denoise import denoise  # noqa: E402
from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.model.config import ModelConfig  # noqa: E402

TAPS = (1, 4, 12, 64)
SETTLE = 300  # frames left out of every fit: the front end's cold start


def ceilings(recs: dict) -> list[str]:
    rows = []
    for rname, rec in recs.items():
        ref = rec["clean"] + rec["static"]
        for horizon in (300, 1000):
            fe = ModelConfig(rank=8, cov_horizon=horizon).frontend(1)
            norm = fe.normalize(rec["noisy"][None])
            oracle = fe.to_counts(fe.target(ref[None], norm), norm)[0]
            cells = [f"{metrics.snr_db(oracle, ref):.2f}"]
            for k in (2, 3):
                z = norm.features[..., :8].copy()
                z[..., k:] = 0
                cells.append(f"{metrics.snr_db(fe.to_counts(z, norm)[0], ref):.2f}")
            rows.append(f"| {rname} | {horizon} | " + " | ".join(cells) + " |")
    return rows


def lagged(z: np.ndarray, taps: int) -> np.ndarray:
    """(n, k) coefficients → (n, k·taps): each frame with its ``taps - 1`` predecessors."""
    n, k = z.shape
    x = np.zeros((n, k * taps))
    for j in range(taps):
        x[j:, j * k:(j + 1) * k] = z[: n - j]
    return x


def fit_apply(x: np.ndarray, t: np.ndarray, fit: slice, apply: slice) -> np.ndarray:
    a = x[fit]
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ t[fit])
    return x[apply] @ w


def linear_filters(z: np.ndarray, t: np.ndarray, back) -> tuple[dict, dict]:
    """SNR (dB) of the best linear causal filter of each length: in-sample and 2-fold."""
    n = len(z)
    h = n // 2
    ins, cv = {}, {}
    for taps in TAPS:
        x = lagged(z, taps)
        ins[taps] = back(fit_apply(x, t, slice(SETTLE, n), slice(0, n)))
        y = np.empty_like(t)
        y[:h] = fit_apply(x, t, slice(h, n), slice(0, h))
        y[h:] = fit_apply(x, t, slice(SETTLE, h), slice(h, n))
        cv[taps] = back(y)
    return ins, cv


def margins(recs: dict) -> tuple[list[str], list[str]]:
    ck = load("spectral-lag0")
    rows, truth_rows = [], []
    for rname, rec in recs.items():
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        pca = baselines.baseline_table(noisy, ref, fs=float(rec["fs"]))["pca (causal, first 60 s)"]["snr_db"]
        model = metrics.snr_db(denoise(noisy, model=ck), ref)

        fe = ck.config.frontend(1)
        norm = fe.normalize(noisy[None])
        z = norm.features[0, :, : ck.config.rank].astype(np.float64)
        t = fe.target(ref[None], norm)[0].astype(np.float64)
        snr = lambda c: metrics.snr_db(fe.to_counts(c[None].astype(np.float32), norm)[0], ref)  # noqa: E731
        ins, cv = linear_filters(z, t, snr)
        best_cv = max(cv, key=cv.get)
        rows.append(f"| {rname} | {pca:.2f} | **{pca + 2:.2f}** | {model:.2f} | "
                    + " | ".join(f"{ins[k]:.2f}" for k in TAPS) + f" | {cv[best_cv]:.2f} (L={best_cv}) |")

        # The true signal subspace: top 3 directions of the clean recording, in noise units.
        b, s, bo = norm.baseline[0], norm.scale[0], norm.out_baseline[0]
        d = (ref - ref.mean(0)) / s.mean(0)
        u = np.linalg.svd(d[SETTLE:], full_matrices=False)[2][:3].T
        zt, tt = ((noisy - b) / s) @ u, ((ref - b) / s) @ u
        snr_t = lambda c: metrics.snr_db(bo + s * (c @ u.T), ref)  # noqa: E731
        ins_t, cv_t = linear_filters(zt, tt, snr_t)
        truth_rows.append(f"| {rname} | **{pca + 2:.2f}** | {snr_t(zt):.2f} | {ins_t[4]:.2f} | {cv_t[4]:.2f} |")
    return rows, truth_rows


def filtered(fe, noisy: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, dict]:
    """Front end ``fe`` over a recording: its target mapped back to counts (the oracle) and the
    2-fold linear filters' outputs in counts, by length."""
    norm = fe.normalize(noisy[None])
    z = norm.features[0, :, : fe.rank].astype(np.float64)
    t = fe.target(ref[None], norm)[0].astype(np.float64)
    back = lambda c: fe.to_counts(c[None].astype(np.float32), norm)[0]  # noqa: E731
    _, cv = linear_filters(z, t, back)
    return back(t), cv


def hemoglobin_bounds(recs: dict) -> list[str]:
    """The linear filters on the coefficients of the front end with hemoglobin's spectra known."""
    from rtdenoise.synth.spectral import SpectralConfig

    band = SpectralConfig()
    rows = []
    for rname, rec in recs.items():
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        pca = baselines.baseline_table(noisy, ref, fs=float(rec["fs"]))["pca (causal, first 60 s)"]["snr_db"]
        cells = []
        for hb in (None, [band.wl_start, band.wl_stop]):
            oracle, cv = filtered(ModelConfig(hemoglobin=hb).frontend(1), noisy, ref)
            cells += [f"{metrics.snr_db(oracle, ref):.2f}", f"{metrics.snr_db(cv[4], ref):.2f}"]
        rows.append(f"| {rname} | **{pca + 2:.2f}** | " + " | ".join(cells) + " |")
    return rows


def sensor_bounds(recs: dict) -> list[str]:
    """The 4-tap filter with the sensor's spectrum known too, and the projection on the known
    directions alone (the classical method with the same knowledge)."""
    from rtdenoise.synth.spectral import SpectralConfig

    band = SpectralConfig()
    rows = []
    for rname, rec in recs.items():
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        pca = baselines.baseline_table(noisy, ref, fs=float(rec["fs"]))["pca (causal, first 60 s)"]["snr_db"]
        fe = ModelConfig(hemoglobin=[band.wl_start, band.wl_stop], sensor=list(sensor_spectrum(rec))).frontend(1)
        norm = fe.normalize(noisy[None])
        z = norm.features[0, :, : fe.rank].astype(np.float64)
        t = fe.target(ref[None], norm)[0].astype(np.float64)
        snr = lambda c: metrics.snr_db(fe.to_counts(c[None].astype(np.float32), norm)[0], ref)  # noqa: E731
        _, cv = linear_filters(z, t, snr)
        # the classical method with the same knowledge: least squares on the sensor's spectrum and
        # hemoglobin's absorption of the running baseline, frame by frame (no network, no filter)
        b, sc = norm.baseline[0], norm.scale[0]
        d = np.stack([np.broadcast_to(sensor_spectrum(rec), b.shape),
                      b * rec["eps_hbo2"], b * rec["eps_hb"]], axis=-1) / sc[..., None]
        q = np.linalg.qr(d)[0]
        known = norm.out_baseline[0] + sc * np.einsum("tk,twk->tw", np.einsum("tw,twk->tk", (noisy - b) / sc, q), q)
        rows.append(f"| {rname} | **{pca + 2:.2f}** | {metrics.snr_db(known, ref):.2f} | {snr(t):.2f} | {cv[4]:.2f} |")
    return rows


def ach_bounds() -> list[str]:
    """On the seed chain's recordings: the unmixed ACh trace (bench_seed_chain) of the 4-tap
    filter's output, fitted to the spectra, on each front end: does a basis cost the sensor trace?"""
    import bench_seed_chain as chain
    from rtdenoise.synth.spectral import SpectralConfig

    band = SpectralConfig()
    rows = []
    for i, photons in enumerate((1500.0, 300.0)):
        rec = chain.recording(photons, 3000, seed=92_001 + i)  # the chain's own recordings
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        cells = []
        hb = [band.wl_start, band.wl_stop]
        for cfg in (ModelConfig(), ModelConfig(hemoglobin=hb),
                    ModelConfig(hemoglobin=hb, sensor=list(sensor_spectrum(rec)))):
            _, cv = filtered(cfg.frontend(1), noisy, ref)
            cells += [f"{metrics.snr_db(cv[4], ref):.2f}", f"{chain.trace_snr_db(chain.ach_trace(cv[4], rec), rec['activity']):.2f}"]
        rows.append(f"| {photons:g} counts | " + " | ".join(cells) + " |")
    return rows


def rig_bounds() -> list[str]:
    """On ``bench_calibrate.py``'s structured-noise rig: the linear causal filters fitted with the
    ground truth on each front end's coefficients, against #13's calibration target (the shipped
    model + 2 dB): can any such filter reach it?"""
    import bench_calibrate as cal
    from rtdenoise.synth import SpectralConfig, simulate

    rig, band = cal.RigNoise(), SpectralConfig()
    hb = [band.wl_start, band.wl_stop]
    recs = {"rig, 2000 counts": simulate(cal.FRAMES, seed=91_001, photons=2000, signal=SpectralConfig(**cal.NO_STATES), noise=rig),
            "rig, 500 counts, held-out dynamics": simulate(cal.FRAMES, seed=91_002, photons=500,
                                                           signal=SpectralConfig(**cal.OUT_OF_RANGE), noise=rig)}
    rows = []
    for rname, rec in recs.items():
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        shipped = metrics.snr_db(denoise(noisy, model="spectral-lag0"), ref)
        cells = []
        for cfg in (ModelConfig(), ModelConfig(hemoglobin=hb),
                    ModelConfig(hemoglobin=hb, sensor=list(sensor_spectrum(rec)))):
            fe = cfg.frontend(1)
            norm = fe.normalize(noisy[None])
            z = norm.features[0, :, : fe.rank].astype(np.float64)
            t = fe.target(ref[None], norm)[0].astype(np.float64)
            ins, cv = linear_filters(z, t, lambda c: metrics.snr_db(fe.to_counts(c[None].astype(np.float32), norm)[0], ref))
            best = max(cv, key=cv.get)
            cells += [f"{max(ins.values()):.2f}", f"{cv[best]:.2f} (L={best})"]
        rows.append(f"| {rname} | {shipped:.2f} | **{shipped + 2:.2f}** | " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    recs = recordings()
    rows = ceilings(recs)
    lin, truth = margins(recs)
    hemo = hemoglobin_bounds(recs)
    sensor = sensor_bounds(recs)
    ach = ach_bounds()
    rig = rig_bounds()
    md = "\n".join([
        "# Ceilings of the causal subspace front end (rank 8)",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command: `python benchmarks/bench_ceiling.py`",
        "",
        "SNR dB. `oracle`: clean signal projected on the running subspace (no network can beat it);",
        "`top-k`: noisy frames projected on the first k directions (no network).",
        "",
        "| recording | cov horizon | oracle | top-2 | top-3 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## The best linear causal filter on `spectral-lag0`'s coefficients",
        "",
        "SNR dB. Each output coefficient a least-squares combination of all 8 over the last L frames,",
        "fitted to the clean target with the ground truth: `in-sample` on the frames it is scored on",
        f"(after the first {SETTLE}; an upper bound for every such filter), `2-fold` fitted on one half and",
        "scored on the other (the best L). #13 asks lag-0 for causal PCA + 2 dB on every recording.",
        "",
        "| recording | causal PCA | target | lag-0 | " + " | ".join(f"in-sample L={k}" for k in TAPS)
        + " | 2-fold |",
        "|---|---|---|---|" + "---|" * len(TAPS) + "---|",
        *lin,
        "",
        "## The same with the true signal subspace (an offline oracle)",
        "",
        "The top 3 directions of the clean recording in noise units, which no causal method has:",
        "the noisy frames projected on them, then the 4-tap linear filter as above.",
        "",
        "| recording | target | projection | in-sample L=4 | 2-fold L=4 |",
        "|---|---|---|---|---|",
        *truth,
        "",
        "## Hemoglobin's spectra in the subspace instead of estimated (`ModelConfig(hemoglobin=...)`)",
        "",
        "The default front end (rank 8, every direction from data) against one whose first 4 directions",
        "are hemoglobin's absorption of the running baseline and the two spectra",
        "(the dark level's share), the other 4 from data: `oracle` as in the first table, `2-fold L=4`",
        "the 4-tap linear filter as in the second (no network in either).",
        "",
        "| recording | target | oracle, data | 2-fold L=4, data | oracle, hemoglobin | 2-fold L=4, hemoglobin |",
        "|---|---|---|---|---|---|",
        *hemo,
        "",
        "## With the sensor's emission spectrum known too (`ModelConfig(sensor=...)`, `train --sensor`)",
        "",
        "The hemoglobin front end with the recording's own sensor spectrum as a 5th known direction,",
        "3 from data: the oracle and the 4-tap filter as above. `known only`: the classical causal method with",
        "the same knowledge, each noisy frame projected on the sensor's spectrum and hemoglobin's absorption",
        "of its running baseline (no network, no filter).",
        "",
        "| recording | target | known only | oracle | 2-fold L=4 |",
        "|---|---|---|---|---|",
        *sensor,
        "",
        "## The sensor trace under each front end (the seed chain's recordings)",
        "",
        "The 4-tap linear filter as above, fitted to the spectra, on `bench_seed_chain.py`'s recordings;",
        "then its ACh trace (unmixing, SNR against the true activity, as in `seed_chain.md`).",
        "",
        "| recording | spectral SNR, data | ACh SNR, data | spectral SNR, hemoglobin | ACh SNR, hemoglobin "
        "| spectral SNR, hemoglobin + sensor | ACh SNR, hemoglobin + sensor |",
        "|---|---|---|---|---|---|---|",
        *ach,
        "",
        "## The calibration rig (`bench_calibrate.py`): can any linear causal filter reach the target?",
        "",
        "#13 asks calibration for the shipped model + 2 dB on the rig with structured noise. The linear causal",
        "filters as above, fitted with the ground truth on each front end's coefficients: `in-sample` the most",
        f"any filter of up to {max(TAPS)} taps reaches (fitted on the frames it is scored on), `2-fold` the best length fitted",
        "on one half. Front ends: every direction from data; hemoglobin's 4 known; and the recording's sensor too.",
        "",
        "| recording | shipped spectral-lag0 | target | data: in-sample | data: 2-fold | hemoglobin: in-sample "
        "| hemoglobin: 2-fold | + sensor: in-sample | + sensor: 2-fold |",
        "|---|---|---|---|---|---|---|---|---|",
        *rig,
    ]) + "\n"
    out = Path(__file__).parent / "results" / "ceiling.md"
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
