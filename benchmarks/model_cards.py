"""Write the shipped models' cards (``models/<name>.md``) and record measured metrics in them.

    python benchmarks/model_cards.py

Reads ``benchmarks/results/quality.json`` and ``benchmarks/results/engine.json`` (run
``bench_quality.py`` and ``bench_engine.py`` first), stores the metrics in each checkpoint
(``metrics``, shown by ``rtdenoise info``; ``fastest_cpu_backend`` is what
``backend="auto"`` picks on a CPU) and writes the cards, so card, checkpoint and benchmark
never disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rtdenoise.model.checkpoint import load, shipped_models_dir

RESULTS = Path(__file__).parent / "results"

PURPOSE = {
    "spectral-lag0": (
        "Closed-loop experiments: strictly causal (lag 0), the output for a frame leaves as soon as "
        "that frame arrives."
    ),
    "spectral-lag5": (
        "Live display and recording where one second of delay is acceptable: the output for frame t "
        "leaves when frame t + 5 arrives (1 s at 5 Hz), so it sees a second of the future."
    ),
}


def engine_rows(engine: dict, name: str) -> list[dict]:
    return [r for r in engine.get("rows", []) if r.get("model") == name]


def main() -> int:
    quality = json.loads((RESULTS / "quality.json").read_text())
    engine = json.loads((RESULTS / "engine.json").read_text()) if (RESULTS / "engine.json").exists() else {}
    for path in sorted(shipped_models_dir().glob("*.pt")):
        ck = load(path)
        key = f"model {ck.name}"
        metrics = {}
        for rname, row in quality["recordings"].items():
            if key in row:
                e = row[key]
                metrics[f"snr_db[{rname}]"] = round(e["snr_db"], 2)
                metrics[f"trace_corr[{rname}]"] = round(e["trace_corr"], 4)
                if e["events"]["within_10pct"] is not None:
                    metrics[f"events_within_10pct[{rname}]"] = round(e["events"]["within_10pct"], 3)
        metrics["pure_noise_events"] = quality["pure_noise_events"].get(key)
        metrics["pure_noise_events_raw"] = quality["pure_noise_events"]["raw"]
        steps = [r for r in engine_rows(engine, ck.name) if r.get("kind") == "step" and r.get("chunk") == 1]
        if steps:
            best = min(steps, key=lambda r: r["median_ms_per_frame"])
            metrics["fastest_cpu_backend"] = best["backend"]
            for r in steps:
                metrics[f"step_1frame_median_ms[{r['backend']}]"] = round(r["median_ms_per_frame"], 4)
        ck.metrics = metrics
        ck.save(path)
        card = render(ck, quality, metrics)
        path.with_suffix(".md").write_text(card)
        print(f"wrote {path.with_suffix('.md')} and the metrics in {path.name}")
    return 0


def render(ck, quality: dict, metrics: dict) -> str:
    pv = ck.provenance
    sig = pv["signal"]
    tr = pv["train"]
    rng = lambda k: f"{sig[k][0]:g}–{sig[k][1]:g}"  # noqa: E731
    lines = [
        f"# Model card: `{ck.name}`",
        "",
        PURPOSE.get(ck.name, ""),
        "",
        "## What it is",
        "",
        f"- Causal DnCNN, architecture `{ck.config.arch}`: {ck.config.depth} layers, width {ck.config.width}, "
        f"dilations {ck.config.dilations}, subspace rank {ck.config.rank}, {ck.config.taps}-tap predicted filters; "
        f"{sum(v.numel() for v in ck.state_dict.values()):,} parameters ({Path(ck.path).stat().st_size / 1e6:.2f} MB).",
        f"- Lag {ck.lag} frames ({ck.lag / ck.fs:g} s); receptive field {ck.receptive_field} frames "
        f"({ck.receptive_field / ck.fs:g} s) plus the front end's running statistics "
        f"(baseline over {ck.config.horizon} frames, spectral subspace over {ck.config.cov_horizon}).",
        f"- Input: spectra of {ck.config.n_bins} bins, {ck.wavelengths[0]:.0f}–{ck.wavelengths[-1]:.0f} nm, at "
        f"{ck.fs:g} Hz, in detector counts. Output: the same frames denoised, float32 counts.",
        "",
        "## Intended data",
        "",
        "Fiber photometry with a spectrometer: a green (GFP-family) sensor with hemoglobin absorption, "
        "as in the DeepDenoise recordings. Trained only on synthetic instances (no real recording), drawn from:",
        "",
        f"- counts at the emission peak {rng('photons')} (log-uniform); emission peak {rng('emission_peak_nm')} nm, "
        f"width {rng('emission_width_nm')} nm, red shoulder {rng('shoulder_ratio')} of the peak at +{rng('shoulder_offset_nm')} nm; "
        f"autofluorescence {rng('autofluorescence')} of the peak;",
        f"- release events at {rng('event_rate_hz')} Hz, amplitudes {rng('event_amplitude')} (log units ≈ ΔF/F), "
        f"one-frame rise, decay {rng('decay_s')} s; slow changes std {rng('slow_std')};",
        f"- hemodynamics (HbO₂ and Hb, independent, below {sig['hemo_cutoff_hz'][1]:g} Hz) std {rng('hemo_std')};",
        f"- noise: {pv['noise']['kind']} model — " + (
            ", ".join(f"{k} {v[0]:g}–{v[1]:g}" for k, v in pv["noise"]["config"].items()) if "config" in pv["noise"] else str(pv["noise"])
        ) + ".",
        "",
        "## Training",
        "",
        f"- Command: `{pv['command']}`",
        f"- {pv['steps']:,} steps of {tr['batch']} instances × {tr['window']} frames ({pv['instances']:,} instances, each new), "
        f"AdamW lr {tr['lr']:g} with {tr['warmup']} warm-up steps and cosine decay, seed {tr['seed']}.",
        f"- Wall time {pv['wall_time_s'] / 60:.1f} min on {pv['machine']} (torch {pv['torch']}), {pv['date']}.",
        f"- Final validation loss {pv['final_val_loss']:.4f} against {pv['val_loss_raw']:.4f} for passing the input through "
        "(mean squared error of the subspace coefficients, in noise units).",
        "",
        "## Measured quality",
        "",
        f"From `benchmarks/bench_quality.py` ({quality['date']}, {quality['machine']}); full tables in "
        "`benchmarks/results/quality.md`. SNR of the dynamic part in dB.",
        "",
        "| recording | raw | best causal classical | best offline classical | this model |",
        "|---|---|---|---|---|",
    ]
    key = f"model {ck.name}"
    for rname, row in quality["recordings"].items():
        causal = max((e["snr_db"], n) for n, e in row.items() if e["causal"] and not n.startswith("model") and n != "raw")
        offline = max((e["snr_db"], n) for n, e in row.items() if not e["causal"])
        lines.append(
            f"| {rname} | {row['raw']['snr_db']:.2f} | {causal[0]:.2f} ({causal[1]}) | {offline[0]:.2f} ({offline[1]}) | "
            f"**{row[key]['snr_db']:.2f}** |"
        )
    lines += [
        "",
        f"Pure noise (steady light): {metrics['pure_noise_events']} transients detected after denoising, "
        f"{metrics['pure_noise_events_raw']} in the raw trace at the same threshold.",
        "",
    ]
    if "fastest_cpu_backend" in metrics:
        lines += [
            "Step latency for one frame (median, `benchmarks/results/engine.md`): "
            + ", ".join(f"{k.split('[')[1][:-1]} {v:.3f} ms" for k, v in metrics.items() if k.startswith("step_1frame"))
            + f"; `backend=auto` picks {metrics['fastest_cpu_backend']} on a CPU.",
            "",
        ]
    lines += [
        "## Limitations",
        "",
        "- Synthetic training only. On a real rig, record dark and steady-light frames and retrain with "
        "`rtdenoise train --dark ... --light ...`: the recorded-noise path is the DeepDenoise method.",
        f"- Only for {ck.config.n_bins}-bin spectra at about {ck.fs:g} Hz: another spectrometer, band or frame rate needs "
        "its own model (`rtdenoise denoise` refuses other widths).",
        "- The first seconds of a stream (and after every gap or restart) are cold: the running baseline and subspace "
        f"need about {ck.config.horizon // 5}–{ck.config.cov_horizon // 5} frames to settle (`warm` in output headers "
        "tells when the network's context is full).",
        "- Signals outside the low-rank spectral model (a second sensor, a red channel, motion artefacts with new "
        "spectral shapes) are projected onto the tracked subspace: keep `rank` above the number of real components.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
