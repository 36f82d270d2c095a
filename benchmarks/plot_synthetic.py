"""Figure of one synthetic training instance: clean, noise, noisy as spectrograms and traces.

    python benchmarks/plot_synthetic.py   # writes benchmarks/results/synthetic_instance.png

So a person can check at a glance that the generator looks like fiber photometry: a green
sensor's emission with a red shoulder, release events rising in one frame and decaying,
hemoglobin absorption dips near 542/577 nm (HbO2) and 555 nm (Hb), shot noise growing
with the signal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rtdenoise import metrics
from rtdenoise.synth import DetectorConfig, DetectorNoise, simulate


def main(out: str = str(Path(__file__).parent / "results" / "synthetic_instance.png")) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = simulate(600, seed=11, photons=2000, noise=DetectorNoise(DetectorConfig(read_noise=(8.0, 8.0))))
    fs = float(rec["fs"])
    t = np.arange(len(rec["noisy"])) / fs
    wl = rec["wavelengths"]
    clean = rec["clean"] + rec["static"]
    noise = rec["noisy"] - clean
    spectra = np.stack([rec["signature"], -rec["eps_hbo2"], -rec["eps_hb"]])

    fig = plt.figure(figsize=(12, 9))
    gs = fig.add_gridspec(4, 3, height_ratios=[1, 1, 1, 1.1])
    mean = clean.mean(0)
    lim = np.percentile(np.abs(clean - mean), 99)
    for i, (name, x, sub) in enumerate([
        ("clean − mean spectrum", clean - mean, True),
        ("noise", noise, False),
        ("noisy − mean spectrum", rec["noisy"] - mean, True),
    ]):
        ax = fig.add_subplot(gs[i, :2])
        vm = lim if sub else np.percentile(np.abs(noise), 99)
        im = ax.imshow(x.T, aspect="auto", origin="lower", extent=[t[0], t[-1], wl[0], wl[-1]], cmap="RdBu_r", vmin=-vm, vmax=vm)
        ax.set_ylabel("wavelength (nm)")
        ax.set_title(name, fontsize=9, loc="left")
        fig.colorbar(im, ax=ax, label="counts", pad=0.01)
    ax = fig.add_subplot(gs[0, 2])
    ax.plot(wl, rec["emission"], label="emission E")
    ax.plot(wl, rec["signature"], label="ΔF signature S")
    ax.plot(wl, rec["eps_hbo2"], label="ε HbO₂ (Prahl)")
    ax.plot(wl, rec["eps_hb"], label="ε Hb (Prahl)")
    ax.set_xlabel("nm")
    ax.legend(fontsize=7)
    ax.set_title("spectra (normalised)", fontsize=9, loc="left")
    ax = fig.add_subplot(gs[1, 2])
    ax.plot(wl, rec["noisy"][:50].mean(0), label="mean spectrum (counts)")
    ax.plot(wl, noise.var(0), label="noise variance")
    ax.set_xlabel("nm")
    ax.legend(fontsize=7)
    ax.set_title("shot noise: variance follows the signal", fontsize=9, loc="left")
    ax = fig.add_subplot(gs[2, 2])
    ax.hist(noise.ravel(), bins=80, color="0.5")
    ax.set_title("noise histogram (counts)", fontsize=9, loc="left")
    ax = fig.add_subplot(gs[3, :])
    noisy_tr = metrics.unmix(rec["noisy"] - rec["static"], spectra)
    for k, (name, truth) in enumerate([("sensor a(t)", rec["activity"]), ("HbO₂ h₁(t)", rec["hbo2"]), ("Hb h₂(t)", rec["hb"])]):
        off = -0.4 * k
        ax.plot(t, noisy_tr[:, k] - noisy_tr[:, k].mean() + off, lw=0.5, color=f"C{k}", alpha=0.5)
        ax.plot(t, truth - truth.mean() + off, lw=1.3, color=f"C{k}", label=f"{name}: true (thick), unmixed from noisy (thin)")
    ax.vlines(rec["event_onsets"] / fs, 0.25, 0.32, color="k", lw=0.8, label="release events")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("log units (offset)")
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("One synthetic photometry instance: 152 bins 480–595 nm, 5 Hz, 2000 counts at peak, read noise 8", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
