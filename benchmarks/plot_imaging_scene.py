"""Figure of one synthetic imaging scene, and how fast scenes are made.

    python benchmarks/plot_imaging_scene.py   # writes benchmarks/results/imaging_scene.png

So a person can check at a glance that the generator looks like a two-photon field of
view: ring-like somata (dark nuclei), a few dim processes, a smooth neuropil haze; that
the PMT noise at ~2 photons hides most of it in single frames and ~200 photons does not;
and that each neuron's trace rises at its spikes and decays with the indicator.
Also prints instances/s for 64x64x32 training instances and the time for a 512x512x300 movie.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from rtdenoise.synth import ImagingConfig, PMTNoise, sample_scene, simulate_movie


def timings() -> dict:
    cfg = ImagingConfig()
    noise = PMTNoise()
    rng = np.random.default_rng(0)
    sample_scene(cfg, 32, rng, shape=(64, 64))  # warm up
    out = {}
    for with_noise in (False, True):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3.0:
            inst = sample_scene(cfg, 32, rng, shape=(64, 64))
            if with_noise:
                noise.sample(inst.clean, rng, fs=inst.fs)
            n += 1
        name = "64x64x32 instances/s" + (" (scene + PMT noise)" if with_noise else " (scene)")
        out[name] = n / (time.perf_counter() - t0)
    for motion in (0.0, 1.0):
        c = cfg.replace(motion_px=(motion, motion), density=(15.0, 15.0))
        t0 = time.perf_counter()
        inst = sample_scene(c, 300, np.random.default_rng(1), shape=(512, 512))
        t1 = time.perf_counter()
        noise.sample(inst.clean, np.random.default_rng(2), fs=inst.fs)
        t2 = time.perf_counter()
        out[f"512x512x300 s, motion {motion:g} px (scene)"] = t1 - t0
        out[f"512x512x300 s, motion {motion:g} px (PMT noise)"] = t2 - t1
    return out


def main(out: str = str(Path(__file__).parent / "results" / "imaging_scene.png")) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = ImagingConfig(
        fs=(30.0, 30.0), density=(18.0, 18.0), soma_radius_px=(6.0, 6.0), rate_hz=(0.1, 1.0),
        rise_s=(0.05, 0.05), decay_s=(0.6, 0.6), amplitude_dff=(0.3, 0.8), motion_px=(0.3, 0.3),
        neuropil_level=(0.25, 0.25), neuropil_contrast=(0.4, 0.4),
    )
    kw = dict(seed=3, shape=(128, 192), config=cfg, noise=PMTNoise())
    low = simulate_movie(300, photons=2.0, **kw)
    high = simulate_movie(300, photons=200.0, **kw)  # same scene and spikes, 100x brighter
    fs = float(low["fs"])
    t = np.arange(low["clean"].shape[0]) / fs

    fig = plt.figure(figsize=(13, 9))
    gs = fig.add_gridspec(3, 4, height_ratios=[1, 1, 1.2])
    k = int(np.argmax(low["spikes"].sum(0)))  # a frame where many neurons fire
    panels = [
        ("clean frame (2 photons)", low["clean"][k] + low["static"], low),
        ("noisy frame, ~2 photons (PMT)", low["noisy"][k], low),
        ("noisy frame, ~200 photons (PMT)", high["noisy"][k], high),
        ("mean of 300 noisy frames, ~2 photons", low["noisy"].mean(0), low),
        ("clean, a corner zoomed 3x", (low["clean"][k] + low["static"])[:43, :64], low),
        ("footprints (colour = neuron)", None, low),
        ("neuropil haze (background)", low["background"], low),
        ("noise: noisy − clean − static, ~200 photons", high["noisy"][k] - high["clean"][k] - high["static"], high),
    ]
    for i, (name, img, rec) in enumerate(panels):
        ax = fig.add_subplot(gs[i // 4, i % 4])
        if img is None:
            fpz = rec["footprints"]
            lab = np.where(fpz.max(0) > 0.3, fpz.argmax(0) + 1, 0)
            ax.imshow(np.where(lab > 0, (lab * 37) % 23, np.nan), cmap="tab20", interpolation="nearest")
        else:
            lo, hi = np.percentile(img, [0.5, 99.7])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])

    ax = fig.add_subplot(gs[2, :])
    fp = low["footprints"].reshape(len(low["footprints"]), -1)
    w = fp / fp.sum(1, keepdims=True)  # footprint-weighted mean
    active = np.argsort(-low["spikes"].sum(1))[:4]
    for j, n in enumerate(active):
        noisy_tr = (low["noisy"] - low["static"]).reshape(len(t), -1) @ w[n]
        clean_tr = low["clean"].reshape(len(t), -1) @ w[n]
        base = np.percentile(clean_tr, 10)
        off = -2.0 * j
        ax.plot(t, noisy_tr / base - 1 + off, lw=0.6, color=f"C{j}", alpha=0.5)
        ax.plot(t, clean_tr / base - 1 + off, lw=1.5, color=f"C{j}", label=f"neuron {n}")
        st = np.nonzero(low["spikes"][n])[0]
        ax.vlines(t[st], off - 0.45, off - 0.2, color=f"C{j}", lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ΔF/F of the footprint mean (offset)")
    ax.set_title("traces at ~2 photons: footprint-weighted mean of the clean (thick) and noisy (thin) movies; "
                 "ticks = spikes", fontsize=8, loc="left")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    p = low
    fig.suptitle(
        f"Synthetic two-photon scene: 128x192 px, {fs:g} Hz, {len(p['footprints'])} somata, rise 50 ms / decay 0.6 s, "
        f"motion 0.3 px rms, PMT noise (excess noise factor 1.2–1.6)", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    for name, v in timings().items():
        print(f"{name}: {v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
