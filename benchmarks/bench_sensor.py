"""A model that takes its sensor's emission spectrum (``train --hemoglobin --sensor``), given
the recording's own spectrum and given one that is off, as a lab's may be.

    python benchmarks/bench_sensor.py [--model spectral-sensor-lag0] [--out STEM]

On the quality benchmark's held-out recordings (``bench_quality.recordings``), SNR of the
spectra in dB for the model given:

- ``own``: the recording's sensor spectrum exactly (what ``rtdenoise set-sensor`` gives it from
  a reference spectrum measured on the rig);
- ``shifted ±1/2/3 nm``: that spectrum moved along the wavelength axis (a spectrometer's
  calibration, or a sensor whose emission peaks elsewhere in tissue than in the cuvette);
- ``tilted ±20 %``: multiplied by a line from 0.8 to 1.2 across the band (the rig's spectral
  response left uncorrected);
- ``catalogue GFP``: the synthetic model's typical sensor (peak 510 nm), not this one's.

Beside it: the shipped ``spectral-lag0`` and #13's target, the best causal classical method
(causal PCA) + 2 dB. Writes ``STEM.{json,md}`` (default ``results/sensor.{json,md}``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_quality import recordings, run_info, sensor_spectrum, write_results  # noqa: E402

from rtdenoise import baselines, metrics  # noqa: E402
from rtdenoise.denoise import denoise  # noqa: E402
from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.synth.spectral import emission_components  # noqa: E402

SHIFTS = (-3.0, -2.0, -1.0, 1.0, 2.0, 3.0)  # nm
TILT = 0.2  # ± at the band's ends


def given(rec: dict) -> dict[str, np.ndarray]:
    """The spectra a lab might give for recording ``rec``'s sensor, by name."""
    wl = rec["wavelengths"]
    own = sensor_spectrum(rec)
    line = (wl - wl.mean()) / (wl.max() - wl.min())  # -0.5 .. 0.5
    out = {"own": own}
    out.update({f"shifted {d:+g} nm": np.interp(wl - d, wl, own) for d in SHIFTS})
    out.update({f"tilted {s:+.0%}": own * (1 + s * 2 * line) for s in (-TILT, TILT)})
    out["catalogue GFP"] = emission_components(wl)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="spectral-sensor-lag0", help="a model trained with --sensor (name or .pt)")
    ap.add_argument("--out", default=str(HERE / "results" / "sensor"))
    args = ap.parse_args(argv)
    ck = load(args.model)
    if ck.config.sensor is None:
        ap.error(f"{args.model} takes no sensor spectrum (trained without --sensor)")
    res = {**run_info(__file__, argv), "model": ck.name, "recordings": {}}
    for rname, rec in recordings().items():
        ref, noisy = rec["clean"] + rec["static"], rec["noisy"]
        pca = baselines.baseline_table(noisy, ref, fs=float(rec["fs"]))["pca (causal, first 60 s)"]["snr_db"]
        row = {"target": pca + 2, "spectral-lag0": metrics.snr_db(denoise(noisy, model="spectral-lag0"), ref),
               "sensor_peak_nm": float(rec["wavelengths"][np.argmax(sensor_spectrum(rec))])}
        for name, spectrum in given(rec).items():
            row[name] = metrics.snr_db(denoise(noisy, model=ck.for_sensor(spectrum)), ref)
        res["recordings"][rname] = row
        print(rname, {k: round(v, 2) for k, v in row.items()}, file=sys.stderr, flush=True)
    print(write_results(args.out, res, markdown))
    return 0


def markdown(res: dict) -> str:
    rows = list(res["recordings"].values())
    names = [k for k in rows[0] if k not in ("target", "spectral-lag0", "sensor_peak_nm")]
    lines = [
        f"# `{res['model']}` given its sensor's spectrum, exact and off",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`",
        "",
        "SNR of the spectra, dB, on the quality benchmark's recordings. `target`: #13's, the best causal",
        "classical method (causal PCA) + 2 dB. The model is given the recording's own sensor spectrum,",
        "that spectrum shifted along the wavelength axis or tilted (±20 % across the band: a spectral",
        "response left uncorrected), or the synthetic model's typical GFP sensor (peak 510 nm) instead.",
        "",
        "| recording (sensor peak) | target | spectral-lag0 | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for rname, r in res["recordings"].items():
        cells = [f"**{r[n]:.2f}**" if r[n] >= r["target"] else f"{r[n]:.2f}" for n in names]
        lines.append(f"| {rname} ({r['sensor_peak_nm']:.0f} nm) | {r['target']:.2f} | {r['spectral-lag0']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Bold: at or above the target."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
