"""Write the shipped models' cards (``models/<name>.md``) and record measured metrics in them.

    python benchmarks/model_cards.py [NAME ...]

Reads ``benchmarks/results/quality.json`` and ``benchmarks/results/engine.json`` (run
``bench_quality.py`` and ``bench_engine.py`` first) for the spectral models, and
``imaging_quality.json`` and ``imaging_engine.json`` (``bench_imaging_quality.py
models/imaging-*.pt`` and ``bench_imaging_engine.py``) for the imaging ones, stores the metrics in each checkpoint
(``metrics``, shown by ``rtdenoise info``; ``fastest_cpu_backend`` is what
``backend="auto"`` picks on a CPU) and writes the cards, so card, checkpoint and benchmark
never disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

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
    "spectral-sensor-lag0": (
        "Closed-loop experiments (lag 0) where the lab has its sensor's emission spectrum as its spectrometer "
        "records it (a reference spectrum measured on the rig, as spectral unmixing uses): that spectrum is put in "
        "the model's front end as a known direction beside hemoglobin's. Give it once with `rtdenoise set-sensor "
        "spectral-sensor-lag0 SPECTRUM.csv -o mine.pt`; this checkpoint has none and will not run without one."
    ),
    "imaging-lag0": (
        "Closed-loop experiments on two-photon (and camera) movies: strictly causal (lag 0), the denoised "
        "frame leaves as soon as that frame arrives. The default for movies."
    ),
    "imaging-lag2": (
        "Live display and online analysis where 70 ms of delay is acceptable: the output for frame t leaves "
        "when frame t + 2 arrives (67 ms at 30 Hz), so it sees two frames of the future. (Two, not more: the "
        "U-Net's finest temporal layer has 3 taps, so a larger lag would leave the frame being denoised out "
        "of its view.)"
    ),
}


def engine_rows(engine: dict, name: str) -> list[dict]:
    return [r for r in engine.get("rows", []) if r.get("model") == name]


def main(argv=None) -> int:
    names = set(sys.argv[1:] if argv is None else argv)  # only these models (default: all)
    quality = json.loads((RESULTS / "quality.json").read_text())
    engine = json.loads((RESULTS / "engine.json").read_text()) if (RESULTS / "engine.json").exists() else {}
    for path in sorted(shipped_models_dir().glob("*.pt")):
        if names and path.stem not in names:
            continue
        ck = load(path)
        if ck.modality == "imaging":
            write_imaging(ck, path)
            continue
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


def _steps_line(pv: dict, tr: dict) -> str:
    """The training's steps and instances; for a chain of runs, in all and then the last run's recipe."""
    recipe = (f"{tr['batch']} instances × {tr['window']} frames, AdamW lr {tr['lr']:g} with {tr['warmup']} warm-up "
              f"steps and cosine decay, seed {tr['seed']}")
    last = pv.get("fine_tune")
    if not last:
        return f"- {pv['steps']:,} steps of {recipe} ({pv['instances']:,} instances, each new)."
    return (f"- {pv['steps']:,} steps in all ({pv['instances']:,} instances, each new); the last run {last['steps']:,} "
            f"steps of {recipe}.")


def _states_last_run_only(pv: dict) -> bool:
    """A chain whose first run drew no brain states (chains from before ``first_signal`` was
    recorded added them in their last run)."""
    if not pv.get("fine_tune"):
        return False
    first = pv.get("first_signal")
    return first is None or first.get("state_level", (0, 0))[1] == 0


def _val_set(pv: dict) -> str:
    """Which held-out instances the validation loss is on: a chain's last run draws its own."""
    return "; on the last run's held-out instances, drawn by its seed" if pv.get("fine_tune") else ""


def _card_head(ck) -> list[str]:
    return [f"# Model card: `{ck.name}`", "", PURPOSE.get(ck.name, ""), "", "## What it is", ""]


def _size(ck) -> str:
    return f"{sum(v.numel() for v in ck.state_dict.values()):,} parameters ({Path(ck.path).stat().st_size / 1e6:.2f} MB)"


def write_imaging(ck, path: Path) -> None:
    quality = json.loads((RESULTS / "imaging_quality.json").read_text())
    engine = json.loads((RESULTS / "imaging_engine.json").read_text())
    metrics = {}
    for level, rows in quality["levels"].items():
        if ck.name in rows:
            r, tag = rows[ck.name], level.split(" ")[0]
            metrics[f"snr_db[{tag}]"] = round(r["snr_db"], 2)
            if "snr_db_settled" in r:
                metrics[f"snr_db_settled[{tag}]"] = round(r["snr_db_settled"], 2)
            metrics[f"trace_corr[{tag}]"] = round(r["trace_corr"], 4)
            if r["transients"]["within_10pct"] is not None:
                metrics[f"transients_within_10pct[{tag}]"] = round(r["transients"]["within_10pct"], 3)
    for level, d in quality.get("more", {}).items():
        if ck.name in d["rows"]:
            metrics[f"snr_db_mean{len(d['seeds'])}[{level.split(' ')[0]}]"] = round(float(np.mean(d["rows"][ck.name]["snr_db"])), 2)
    if ck.name in quality["pure_noise"]:
        metrics["pure_noise_transients"] = quality["pure_noise"][ck.name]["transients"]
        metrics["pure_noise_transients_raw"] = quality["pure_noise"]["raw"]["transients"]
    steps = [c for c in engine["cases"] if c["arch"] == ck.config.arch]
    if steps:
        big = max(c["size"] for c in steps)  # the frame size where a backend's speed decides real time
        fastest = min((c for c in steps if c["size"] == big), key=lambda c: c["step_p50_ms"])
        metrics["fastest_cpu_backend"] = fastest["backend"]
        for c in steps:
            metrics[f"step_1frame_median_ms[{c['backend']},{c['size']}]"] = round(c["step_p50_ms"], 3)
    ck.metrics = metrics
    ck.save(path)
    path.with_suffix(".md").write_text(render_imaging(ck, quality, engine, metrics))
    print(f"wrote {path.with_suffix('.md')} and the metrics in {path.name}")


REG = "gaussian + ema, registered (causal)"


def _low_light_gap(ck, quality: dict) -> list[str]:
    """The card's line on the 1-photon targets (+3 dB over the best causal filter, trace corr at least its),
    from the held-out movies' table."""
    d = quality.get("more", {}).get("low (1 photon)")
    if not d or ck.name not in d["rows"] or REG not in d["rows"]:
        return []
    me, reg = d["rows"][ck.name], d["rows"][REG]
    diff = np.asarray(me["snr_db"]) - np.asarray(reg["snr_db"])
    corr, corr_reg = np.mean(me["trace_corr"]), np.mean(reg["trace_corr"])
    short = ([f"over the {len(diff)} held-out movies its SNR less that of the best causal classical filter (Gaussian + "
              f"EMA on the motion-corrected movie, tuned on the truth) is {diff.min():+.1f} to {diff.max():+.1f} dB "
              "(the target: +3)"] if diff.min() < 3 else []) + (
        [f"its per-neuron trace correlation is {corr:.3f} against the filter's {corr_reg:.3f}"] if corr < corr_reg else [])
    return [f"- At one photon, short of its issue's quality targets: {'; '.join(short)} (`imaging_quality.md`)."] if short else []


def render_imaging(ck, quality: dict, engine: dict, metrics: dict) -> str:
    pv, cfg = ck.provenance, ck.config
    sig, tr = pv["signal"], pv["train"]
    rng = lambda k: f"{sig[k][0]:g}–{sig[k][1]:g}"  # noqa: E731
    noise = pv["noise"]
    lines = [
        *_card_head(ck),
        f"- Causal 3-D U-Net, architecture `{cfg.arch}`: pixel-unshuffle to ½ resolution, temporal layers at ½ and ¼ "
        f"(dilations {cfg.dilations}, {cfg.kernel_t} taps), width {cfg.width}"
        + (f", with leaky integrators of the input at full resolution (rates {cfg.rates} per frame, one frame of "
           "state each: a fading memory beyond the filters' field)" if cfg.rates else "") + f"; {_size(ck)}.",
        f"- Lag {ck.lag} frames ({ck.lag / ck.fs:.2f} s at {ck.fs:.0f} Hz); temporal receptive field of the filters "
        f"{ck.receptive_field} frames ({ck.receptive_field / ck.fs:.1f} s); "
        f"per-pixel running baseline over {cfg.horizon} frames ({cfg.horizon / ck.fs:.0f} s) and a √-scale with a "
        f"variance floor of {cfg.floor:g} count².",
        "- Input: movies (T, H, W) of any frame size from 16 × 16 pixels up (trained on "
        f"{' × '.join(map(str, tr.get('patch') or sig['shape']))}-pixel patches; convolutional in space), in detector counts (photons at "
        "gain 1). Output: the same frames denoised, float32 counts (`--dtype input` for the input's integer type).",
        "",
        "## Intended data",
        "",
        "Two-photon calcium imaging of somata (GCaMP-like indicators) at about 30 Hz, dim: "
        "a fraction of a photon to tens of photons per pixel per frame. Trained only on synthetic scenes "
        "(`rtdenoise.synth.imaging`), drawn from:",
        "",
        f"- frame rate {rng('fs')} Hz; resting brightness at the brightest soma {rng('photons')} photons per pixel "
        f"per frame (log-uniform);",
        f"- spike events at {rng('rate_hz')} Hz per neuron, ΔF/F {rng('amplitude_dff')} per spike, rise {rng('rise_s')} s, "
        f"decay {rng('decay_s')} s;",
        f"- noise: {noise.get('kind')} model" + (
            " — " + ", ".join(f"{k} {v[0]:g}–{v[1]:g}" for k, v in noise["config"].items()
                              if isinstance(v, (list, tuple)) and len(v) == 2) if "config" in noise else "") + ".",
        "",
        "## Training",
        "",
        f"- Command: `{pv['command']}`",
        _steps_line(pv, tr),
        f"- Wall time {pv['wall_time_s'] / 60:.1f} min on {pv['machine']} (torch {pv['torch']}), {pv['date']}.",
        f"- Final validation loss {pv['final_val_loss']:.4f} against {pv['val_loss_raw']:.4f} for passing the input "
        f"through (mean squared error in noise units{_val_set(pv)}).",
        "",
        "## Measured quality",
        "",
        f"From `benchmarks/bench_imaging_quality.py` ({quality['date']}, {quality['machine']}); full tables and "
        "the figure in `benchmarks/results/imaging_quality.{md,png}`. Held-out movies outside the training draws "
        "(indicator decay 2.5 s), 128 × 128 px, 30 Hz; SNR of the dynamic part in dB, per-neuron trace correlation.",
        "",
        "| level | raw | best causal classical | offline 3-D Gaussian | DeepCAD-RT (offline) | this model "
        "| trace corr (best causal) | transients within 10 % (best causal) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda r: "-" if r["transients"]["within_10pct"] is None else f"{r['transients']['within_10pct']:.0%}"  # noqa: E731
    for level, rows in quality["levels"].items():
        if ck.name not in rows:
            continue
        causal = {k: r for k, r in rows.items() if "causal" in k}
        best = max(causal, key=lambda k: causal[k]["snr_db"])
        best_corr = max(r["trace_corr"] for r in causal.values())
        off = rows.get("gaussian 3-D (offline)", {}).get("snr_db", float("nan"))
        dc = next((r["snr_db"] for k, r in rows.items() if k.startswith("DeepCAD-RT")), None)
        me = rows[ck.name]
        lines.append(f"| {level} | {rows['raw']['snr_db']:.2f} | {causal[best]['snr_db']:.2f} ({best}) | {off:.2f} | "
                     f"{'-' if dc is None else f'{dc:.2f}'} | **{me['snr_db']:.2f}** | {me['trace_corr']:.3f} "
                     f"({best_corr:.3f}) | {pct(me)} ({pct(causal[best])}) |")
    settled = [(level.split(" (")[0], rows[ck.name]["snr_db_settled"],
                max(r["snr_db_settled"] for k, r in rows.items() if "causal" in k))
               for level, rows in quality["levels"].items() if "snr_db_settled" in rows.get(ck.name, {})]
    if settled:
        lines += ["", "After the first 300 frames (10 s), once the per-pixel baseline has settled: "
                  + "; ".join(f"{lv} {me:.2f} dB against {best:.2f} for the best causal classical filter"
                              for lv, me, best in settled) + "."]
    more = [(level.split(" (")[0], d) for level, d in quality.get("more", {}).items() if ck.name in d["rows"]]
    if more:
        mean = lambda d, k: float(np.mean(d["rows"][k]["snr_db"]))  # noqa: E731
        lines += ["", f"Over {len(more[0][1]['seeds'])} held-out movies per level (new scenes, same settings; "
                  "`imaging_quality.md` has each): "
                  + "; ".join(f"{lv} {mean(d, ck.name):.2f} dB against {mean(d, 'gaussian + ema (causal)'):.2f} for "
                              f"Gaussian + EMA, {mean(d, REG):.2f} for it on the motion-corrected movie and "
                              f"{mean(d, 'gaussian 3-D (offline)'):.2f} for the offline 3-D Gaussian"
                              if REG in d["rows"] else
                              f"{lv} {mean(d, ck.name):.2f} dB against {mean(d, 'gaussian + ema (causal)'):.2f} for "
                              f"Gaussian + EMA and {mean(d, 'gaussian 3-D (offline)'):.2f} for the offline 3-D Gaussian"
                              for lv, d in more)
                  + ". The front end follows the frame's rigid motion, which these movies have (0.1–1.1 px): "
                  "`imaging_motion.md` has the model against motion."]
    if "pure_noise_transients" in metrics:
        lines += ["", f"Pure noise (uniform steady light, 5 photons): {metrics['pure_noise_transients']} transients in 16 "
                  f"region traces after denoising, {metrics['pure_noise_transients_raw']} in the raw movie at the same "
                  "thresholds."]
    steps = [c for c in engine["cases"] if c["arch"] == cfg.arch]
    if steps:
        lines += ["", "Speed on this CPU (`benchmarks/results/imaging_engine.md`, one frame per step, front end included): "
                  + ", ".join(f"{c['backend']} {c['size']}² {c['step_p50_ms']:.1f} ms ({c['frames_per_s']:.0f} frames/s)"
                              for c in steps) + "."]
    lines += [
        "",
        "## Limitations",
        "",
        "- Trained on photon counts (gain 1). If your movie's counts are not photons (a digitizer's or a camera's "
        f"units), set the model to them from the movie itself: `rtdenoise train tuned.pt --self-supervised movie.tif "
        f"--init {ck.name}` (its photon transfer: +1.9 dB on a two-photon movie at 4 counts per photon, "
        "`benchmarks/results/selfsup_pmt_adu.md`; then 5 CPU-minutes of photon splitting on the movie, +0.75 dB more "
        "on an sCMOS movie, `selfsup.md`, skipped on movies below 2 photons per pixel, where it costs quality). "
        "Synthetic scenes only: for a known detector, `--dark`/`--light` recordings train with its real noise.",
        f"- The first seconds of a stream (and after every gap or restart) are cold: the per-pixel baseline needs "
        f"about {cfg.horizon // 2}–{cfg.horizon} frames to settle.",
        *_low_light_gap(ck, quality),
        "- Spike-evoked transients come out lower than they are (about half or fewer within 10 % of their height, "
        "`imaging_quality.md`): for amplitudes, check against the raw trace.",
        "- Motion is followed as one rigid shift per frame (up to 2 px a frame; past 8 px of drift the baseline "
        "starts again from the current view). Non-rigid motion and changes of focus are not followed.",
        "- ONNX Runtime and torch on a CPU; TensorRT plans are not built for imaging models yet (fixed frame sizes "
        "come with the live imaging work).",
        "",
    ]
    return "\n".join(lines)


def render(ck, quality: dict, metrics: dict) -> str:
    pv = ck.provenance
    sig = pv["signal"]
    tr = pv["train"]
    rng = lambda k: f"{sig[k][0]:g}–{sig[k][1]:g}"  # noqa: E731
    lines = [
        *_card_head(ck),
        f"- Causal DnCNN, architecture `{ck.config.arch}`: {ck.config.depth} layers, width {ck.config.width}, "
        f"dilations {ck.config.dilations}, subspace rank {ck.config.rank}, {ck.config.taps}-tap predicted filters"
        + (" over every coefficient (`mix`)" if ck.config.mix else "") + "; "
        f"{_size(ck)}.",
        *([f"- Hemoglobin's absorption spectra (Prahl) are put in the subspace, not estimated: 4 of its {ck.config.rank} "
           f"directions (their absorption of the running baseline, and the two spectra), the other "
           f"{ck.config.rank - 4 - (ck.config.sensor is not None)} tracked from data."] if ck.config.hemoglobin else []),
        *([("- The sensor's emission spectrum is one more known direction: trained on each instance's own; "
            + ("this checkpoint has none yet, give the lab's with `rtdenoise set-sensor`." if not ck.config.sensor
               else "this checkpoint carries one (`rtdenoise set-sensor`)."))] if ck.config.sensor is not None else []),
        f"- Lag {ck.lag} frames ({ck.lag / ck.fs:g} s); receptive field {ck.receptive_field} frames "
        f"({ck.receptive_field / ck.fs:g} s) plus the front end's running statistics "
        f"(baseline over {ck.config.horizon} frames, spectral subspace over {ck.config.cov_horizon}"
        + (f"; the output's baseline takes its bin-by-bin detail from a mean over {ck.config.slow_horizon}"
           if ck.config.slow_horizon else "") + ").",
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
        *([f"- brain states{' (the last run only)' if _states_last_run_only(pv) else ''} (wake, NREM, REM-like bouts, "
           f"{rng('state_dwell_s')} s mean in a wake or NREM bout): "
           f"ACh level of wake and REM {rng('state_level')} above NREM (log units), events on top;"]
          if sig.get("state_level", (0, 0))[1] > 0 else []),
        f"- hemodynamics (HbO₂ and Hb, independent, below {sig['hemo_cutoff_hz'][1]:g} Hz) std {rng('hemo_std')};",
        f"- noise: {pv['noise']['kind']} model — " + (
            ", ".join(f"{k} {v[0]:g}–{v[1]:g}" for k, v in pv["noise"]["config"].items()) if "config" in pv["noise"] else str(pv["noise"])
        ) + ".",
        "",
        "## Training",
        "",
        f"- Command: `{pv['command']}`",
        _steps_line(pv, tr),
        f"- Wall time {pv['wall_time_s'] / 60:.1f} min on {pv['machine']} (torch {pv['torch']}), {pv['date']}.",
        f"- Final validation loss {pv['final_val_loss']:.4f} against {pv['val_loss_raw']:.4f} for passing the input through "
        f"(mean squared error of the subspace coefficients, in noise units{_val_set(pv)}).",
        "",
        "## Measured quality",
        "",
        f"From `benchmarks/bench_quality.py` ({quality['date']}, {quality['machine']}); full tables in "
        "`benchmarks/results/quality.md`. SNR of the dynamic part in dB"
        + (", the model given each recording's own sensor spectrum as a lab gives its own (`results/sensor.md`: "
           "given one that is off)" if ck.config.sensor is not None else "") + ".",
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
    if "fastest_cpu_backend" not in metrics:  # not in engine.md: its cost over whole recordings instead
        cost = [row[key]["ms_per_frame"] for row in quality["recordings"].values() if "ms_per_frame" in row.get(key, {})]
        if cost:
            lines += [f"Cost on this CPU: {np.mean(cost):.3f} ms a frame over a whole recording (torch, front end "
                      "included; `quality.json`).", ""]
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
        *(["- It needs the sensor's spectrum as the rig records it, to within about a nanometre: shifted by 3 nm it "
           "loses up to 1.8 dB on the benchmark's recordings, and another sensor's catalogue spectrum (a 510 nm GFP "
           "for a 527 nm sensor) up to 2.6 dB, 1.6 dB below `spectral-lag0` (`results/sensor.md`). A smooth error of "
           "the spectral response (±20 % across the band) costs at most 0.3 dB.",
           "- Its unmixed sensor (ACh) trace is not better everywhere its spectra are: on the seed's chain it gains "
           "+8.64 dB over raw at 1500 counts against `spectral-lag0`'s +10.71, and +14.46 and +5.76 at 300 and 3000 "
           "counts against +13.76 and +5.12 (`results/seed_chain_sensor.md`)."] if ck.config.sensor is not None else []),
        "- Signals outside the low-rank spectral model (a second sensor, a red channel, motion artefacts with new "
        "spectral shapes) are projected onto the tracked subspace: keep `rank` above the number of real components"
        + (f" (here {ck.config.rank - 4 - (ck.config.sensor is not None)} directions are left for everything but "
           "hemoglobin" + (" and the sensor" if ck.config.sensor is not None else "") + ")."
           if ck.config.hemoglobin else "."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
