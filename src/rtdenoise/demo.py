"""``rtdenoise demo``: a simulated experiment end to end over loopback ZeroMQ.

A simulated spectrometer (the synthetic generator with the detector noise model), or with
``--modality imaging`` a simulated two-photon rig (512 × 512 uint16 at 30 Hz), publishes
frames, paced open-loop; the service (its own process, ``rtdenoise serve``, unless
``--in-process``) denoises them with the shipped default model; a
subscriber receives the denoised frames, as a closed-loop controller would. Latency is
measured from each frame's *intended* send time to its arrival at the subscriber, so a
stall anywhere shows up in the numbers (no coordinated omission).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

STREAM = "fiber0"


#: Per modality: what is simulated and how fast, when the caller does not say.
DEFAULTS = {
    "spectral": {"seconds": 30.0, "rate": 50.0, "photons": 2000.0},
    "imaging": {"seconds": 10.0, "rate": 30.0, "photons": 5.0},  # a two-photon rig: 512 x 512 uint16 at 30 Hz
}


def run_demo(
    *,
    modality: str = "spectral",
    seconds: float | None = None,
    rate: float | None = None,
    size: int = 512,
    model=None,
    backend: str = "auto",
    photons: float | None = None,
    seed: int = 0,
    json_path: str | None = None,
    plot_path: str | None = "demo.png",
    progress: bool = True,
    spin: bool = False,
    separate: bool = True,
) -> dict:
    """Run the demo; return the report dict (also written to ``json_path`` if given).

    ``modality``: ``"spectral"`` (a fiber-photometry spectrometer, 152-bin spectra) or
    ``"imaging"`` (a two-photon rig: ``size`` × ``size`` uint16 frames, the shipped default
    imaging model). ``seconds``, ``rate`` (frames/s) and ``photons`` default per modality
    (:data:`DEFAULTS`). The simulated two-photon rig records at ``rate`` (a rig at 30 Hz
    sends 30 Hz frames, and says so in ``fs``). The simulated spectrometer records at 5 Hz
    (the model's frame rate); publishing faster replays that recording faster than real
    time, which stresses the service without changing what the model sees.
    ``spin``: the service's latency mode (:class:`~rtdenoise.stream.config.ServiceConfig`).
    ``separate``: run the service as its own process (``rtdenoise serve``), as beside real
    acquisition software, rather than in this one (where its threads share Python's GIL
    with the simulated rig and the subscriber).
    """
    from tqdm import tqdm

    from rtdenoise import metrics
    from rtdenoise.bench import paced_load
    if modality not in DEFAULTS:
        raise ValueError(f"modality must be one of {sorted(DEFAULTS)}, got {modality!r}")
    d = DEFAULTS[modality]
    seconds = d["seconds"] if seconds is None else seconds
    rate = d["rate"] if rate is None else rate
    photons = d["photons"] if photons is None else photons
    if seconds <= 0 or rate <= 0:
        raise ValueError(f"--seconds and --rate must be > 0, got {seconds} and {rate}")
    if modality == "imaging" and not 16 <= size <= 4096:
        raise ValueError(f"--size must be 16..4096 pixels, got {size}")
    n = max(1, int(round(seconds * rate)))
    rec, noisy, ref = _simulate(modality, n, seed=seed, photons=photons, size=size, rate=rate)

    imaging = modality == "imaging"
    if model is None and imaging:
        from rtdenoise.model.checkpoint import DEFAULT_MODELS

        model = DEFAULT_MODELS["imaging"]
    kw = dict(model=model, backend=backend, threads=2 if imaging else 1, spin=spin,
              warm_shapes=(noisy.shape[1:],), max_batch=1,  # one stream: no group of several to warm
              max_queue=100 if imaging else 1000)  # ~3 s of a 30 Hz rig; a backlog is stale anyway
    service = ServiceProcess(**kw) if separate else InProcess(**kw)
    lag = service.lag
    bar = tqdm(total=n - lag, disable=not progress, unit="frame", dynamic_ncols=True, mininterval=0.5)
    last = [0.0]

    # The progress line runs on the thread that receives the outputs, so it must stay cheap or it
    # delays the frames it reports on: the gain of 30 whole 512 x 512 frames took 160 ms here, every
    # 0.5 s. So: the latest 10 frames, their central 64 x 64 pixels (~1 ms); and no work at all
    # without a progress bar (the benchmarks).
    sub = (slice(None), *(slice(max(0, d // 2 - 32), d // 2 + 32) for d in noisy.shape[1:])) if imaging \
        else (slice(None),)

    def show(received, outputs, e2e_ms):
        bar.update(received - bar.n)
        now = time.monotonic()
        if now - last[0] > 0.5 and received > 20:
            out, e = outputs[STREAM], e2e_ms[STREAM]
            done = np.flatnonzero(_done(out))[-10:]
            e = e[~np.isnan(e)]
            o, n_, r = (a[sub][done] for a in (out, noisy, ref))  # a view, then 10 small frames
            bar.set_postfix(p50=f"{np.percentile(e, 50):.2f}ms", p99=f"{np.percentile(e, 99):.2f}ms",
                            gain=f"{metrics.snr_db(o, r) - metrics.snr_db(n_, r):+.1f}dB")
            last[0] = now

    try:
        res = paced_load(service.addresses["sub"], service.addresses["pub"], {STREAM: noisy}, rate=rate,
                         lag=lag, fs=float(rec["fs"]), progress=show if progress else None)
        bar.close()
    finally:
        stats = service.stop()
    out = res.outputs[STREAM]
    done = _done(out)
    summary = res.latency_summary()
    stream_stats = stats.get("streams", {}).get(STREAM, {})
    report = {
        "modality": modality,
        "shape": list(noisy.shape[1:]),
        "dtype": noisy.dtype.str,
        "frames_in": res.frames_in,
        "frames_out": res.frames_out,
        "frames_lost": res.frames_lost,
        "frames_in_flight": lag,
        "late_sends": res.late_sends,
        "rate_hz": rate,
        "fs_hz": float(rec["fs"]),  # the recording's frame rate, sent in each message's fs
        "seconds": seconds,
        "model": service.model,
        "backend": service.backend,
        "lag": lag,
        "spin": spin,
        "latency_ms": {k: summary[k] for k in ("p50", "p90", "p99", "p999", "max")},
        "latency_stages_ms_p50": summary["stages_p50"],
        "snr_db": {
            "raw": metrics.snr_db(noisy[done], ref[done]) if done.any() else float("nan"),
            "denoised": metrics.snr_db(out[done], ref[done]) if done.any() else float("nan"),
        },
        "service": {k: stream_stats.get(k) for k in ("frames_in", "frames_out", "gaps", "dropped", "restarts")},
        "rejected": stats.get("rejected_by_reason", {}),
    }
    if imaging and done.any():
        fp = rec["footprints"]
        report["neuron_corr"] = {
            "raw": float(np.nanmean(metrics.neuron_correlation(noisy[done], ref[done], fp))),
            "denoised": float(np.nanmean(metrics.neuron_correlation(out[done], ref[done], fp))),
        }
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    if plot_path and done.any():
        (plot_movie if imaging else plot)(rec, out, res.e2e_ms[STREAM], report, plot_path)
    return report


class ServiceDidNotStart(ValueError):
    """``serve`` refused to start and said why (a model it cannot load, an address in use):
    a user's error, reported as every verb reports one."""


class InProcess:
    """The service in this process (``separate=False``)."""

    def __init__(self, **kw):
        from rtdenoise.stream.service import Service

        self.svc = Service(sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*", control="ipc://*",
                           **kw).start()
        self.addresses, self.lag = self.svc.addresses, self.svc.lag
        self.model, self.backend = self.svc.engine.name, self.svc.engine.backend

    def stop(self) -> dict:
        return self.svc.stop()


class ServiceProcess:
    """``rtdenoise serve`` as a child process on free loopback ports (``separate=True``)."""

    def __init__(self, *, model, backend: str, threads: int, spin: bool, max_queue: int, max_batch: int | None = None,
                 warm_shapes: tuple = ()):
        import re
        import subprocess
        import sys
        import tempfile

        self._tmp = None
        if model is not None and not isinstance(model, (str, os.PathLike)):  # a Checkpoint: the child needs a file
            self._tmp = tempfile.TemporaryDirectory(prefix="rtdenoise-demo-")
            path = Path(self._tmp.name) / "model.pt"
            model.save(path)
            model = path
        cmd = [sys.executable, "-m", "rtdenoise.cli", "serve", "--bind-sub", "--sub", "tcp://127.0.0.1:*",
               "--pub", "tcp://127.0.0.1:*", "--control", "ipc://*", "--backend", backend, "--threads", str(threads),
               "--max-queue", str(max_queue), *(["--model", str(model)] if model is not None else []),
               *(["--spin"] if spin else []), *(["--max-batch", str(max_batch)] if max_batch else []),
               *(a for shape in warm_shapes for a in ("--warm-shape", "x".join(map(str, shape))))]
        # stderr to a file: a pipe nobody reads would block the service once full of warnings
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True)
        line = self.proc.stdout.readline()  # one line when ready (EOF if it fails)
        m = re.search(r"ready model=(\S+) backend=(\S+) lag=(\d+) sub=(\S+) .*pub=(\S+) control=(\S+)", line)
        if m is None:
            self.proc.kill()
            self.proc.wait()
            self._err.seek(0)
            err = self._err.read().strip().splitlines()
            self._err.close()
            why = err[-1].removeprefix("rtdenoise serve: error: ") if err else repr(line)
            raise ServiceDidNotStart(f"the service did not start: {why}")
        self.model, self.backend, self.lag = m[1], m[2], int(m[3])
        self.addresses = {"sub": m[4], "pub": m[5], "control": m[6]}

    def stop(self) -> dict:
        from rtdenoise.stream.control import control

        try:
            stats = control(self.addresses["control"], "status", timeout=10)
            control(self.addresses["control"], "stop", timeout=10)
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate()
            self._err.close()
            if self._tmp is not None:
                self._tmp.cleanup()
        return stats


def _simulate(modality: str, n: int, *, seed: int, photons: float, size: int, rate: float):
    """(recording, what the instrument sends, the ground truth a perfect denoiser returns)."""
    if modality == "imaging":
        from rtdenoise.synth import ImagingConfig, simulate_movie

        config = dataclasses.replace(ImagingConfig(), fs=(rate, rate))  # the rig records at the rate it sends
        rec = simulate_movie(n, seed=seed, shape=(size, size), photons=photons, config=config)
        # as a camera or a two-photon digitizer sends it: whole counts, uint16
        noisy = np.clip(np.rint(rec["noisy"]), 0, np.iinfo(np.uint16).max).astype("<u2")
        return rec, noisy, rec["clean"] + rec["static"]
    from rtdenoise.synth import DetectorConfig, DetectorNoise, simulate

    rec = simulate(n, seed=seed, photons=photons, noise=DetectorNoise(DetectorConfig(read_noise=(8.0, 8.0))))
    return rec, rec["noisy"], rec["clean"] + rec["static"]


def _done(out: np.ndarray) -> np.ndarray:
    """Which frames of ``out`` (NaN until received) have arrived."""
    return ~np.isnan(out.reshape(len(out), -1)[:, 0])


def format_report(r: dict) -> str:
    lat = r["latency_ms"]
    return "\n".join([
        f"rtdenoise demo: {r['model']} on {r['backend']} (lag {r['lag']}), {r['rate_hz']:g} frames/s for {r['seconds']:g} s"
        + (f", frames {'×'.join(map(str, r['shape']))} {r['dtype']}" if r.get("modality") == "imaging" else ""),
        f"  frames      in {r['frames_in']}  out {r['frames_out']}  lost {r['frames_lost']}"
        + (f"  in flight {r['frames_in_flight']}" if r["frames_in_flight"] else "")
        + (f"  (publisher late {r['late_sends']}×)" if r["late_sends"] else ""),
        f"  latency     p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  p99.9 {lat['p999']:.3f}  "
        f"max {lat['max']:.3f} ms (intended send → subscriber)",
        "  stages p50  " + "  ".join(f"{k} {v:.3f}" for k, v in r["latency_stages_ms_p50"].items()) + " ms",
        f"  SNR         raw {r['snr_db']['raw']:.2f} dB → denoised {r['snr_db']['denoised']:.2f} dB "
        f"({r['snr_db']['denoised'] - r['snr_db']['raw']:+.2f} dB)",
        *([f"  neurons     trace correlation with the truth: raw {r['neuron_corr']['raw']:.3f} → denoised "
           f"{r['neuron_corr']['denoised']:.3f}"] if "neuron_corr" in r else []),
    ])


def plot(rec: dict, out: np.ndarray, e2e: np.ndarray, report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdenoise import metrics

    ref = rec["clean"] + rec["static"]
    noisy = rec["noisy"]
    fs = float(rec["fs"])
    t = np.arange(len(noisy)) / fs
    wl = rec["wavelengths"]
    mean = ref.mean(0)
    lim = np.percentile(np.abs(ref - mean), 99)
    spectra = np.stack([rec["signature"], -rec["eps_hbo2"], -rec["eps_hb"]])
    fig, axes = plt.subplots(5, 1, figsize=(10, 11), gridspec_kw={"height_ratios": [1, 1, 1, 1.2, 1]})
    for ax, (name, x) in zip(axes, [("raw", noisy), ("denoised (live)", out), ("clean", ref)]):
        ax.imshow((np.nan_to_num(x, nan=0) - mean).T, aspect="auto", origin="lower", cmap="RdBu_r",
                  extent=[t[0], t[-1], wl[0], wl[-1]], vmin=-lim, vmax=lim)
        ax.set_ylabel("nm")
        ax.set_title(f"{name} − mean spectrum", fontsize=9, loc="left")
    ok = ~np.isnan(out[:, 0])
    ax = axes[3]
    for name, x, style in [("raw", noisy, dict(lw=0.5, alpha=0.6)), ("denoised", out, dict(lw=1.0)), ("clean", ref, dict(lw=1.2, color="k"))]:
        tr = np.full(len(x), np.nan)
        tr[ok] = metrics.unmix(x[ok] - rec["static"], spectra)[:, 0]
        ax.plot(t, tr, label=name, **style)
    ax.set_ylabel("sensor (unmixed)")
    ax.set_xlabel("recording time (s at 5 Hz)")
    ax.legend(fontsize=8)
    ax = axes[4]
    e = e2e[~np.isnan(e2e)]
    ax.hist(e, bins=80, color="0.4")
    lat = report["latency_ms"]
    for q, c in (("p50", "C0"), ("p99", "C1"), ("p999", "C3")):
        ax.axvline(lat[q], color=c, label=f"{q} {lat[q]:.2f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("latency, intended send → subscriber (ms)")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"rtdenoise demo: {report['model']}, {report['rate_hz']:g} frames/s; SNR {report['snr_db']['raw']:.1f} → "
        f"{report['snr_db']['denoised']:.1f} dB; lost {report['frames_lost']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_movie(rec: dict, out: np.ndarray, e2e: np.ndarray, report: dict, path: str) -> None:
    """The imaging demo's figure: a late frame raw / denoised / clean, three neurons' traces,
    the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdenoise import metrics

    noisy, ref = rec["noisy"], rec["clean"] + rec["static"]
    done = _done(out)
    k = int(np.flatnonzero(done)[-1])
    h, w = ref.shape[1:]
    c = min(h, w, 160)  # a crop the eye can read at this size
    y0, x0 = (h - c) // 2, (w - c) // 2
    crop = (slice(y0, y0 + c), slice(x0, x0 + c))
    lo, hi = np.percentile(ref[k][crop], [1, 99.5])
    fig = plt.figure(figsize=(11, 9))
    grid = fig.add_gridspec(3, 3, height_ratios=[1.2, 1, 0.8])
    for j, (name, x) in enumerate([("raw", noisy), ("denoised (live)", out), ("clean", ref)]):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(x[k][crop], cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"{name}, frame {k}" + (f" ({c}×{c} crop)" if c < max(h, w) else ""), fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    fp = rec["footprints"]
    t = np.arange(len(ref)) / float(rec["fs"])
    if len(fp):
        bright = np.argsort(rec["traces"].max(1))[::-1][:3]
        for i, nrn in enumerate(bright):
            off = 1.2 * i
            tr = {name: metrics.neuron_traces(x[done], fp[nrn : nrn + 1])[0] for name, x in
                  (("raw", noisy), ("denoised", out), ("clean", ref))}
            scale = max(np.ptp(tr["clean"]), 1e-9)
            base = tr["clean"].min()
            for name, style in (("raw", dict(lw=0.5, alpha=0.5, color="0.5")), ("denoised", dict(lw=1.0, color="C0")),
                                ("clean", dict(lw=1.0, color="k"))):
                ax.plot(t[done], (tr[name] - base) / scale + off, label=name if i == 0 else None, **style)
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("three brightest neurons (scaled)")
    ax = fig.add_subplot(grid[2, :])
    e = e2e[~np.isnan(e2e)]
    ax.hist(e, bins=80, color="0.4")
    lat = report["latency_ms"]
    for q, col in (("p50", "C0"), ("p99", "C1"), ("p999", "C3")):
        ax.axvline(lat[q], color=col, label=f"{q} {lat[q]:.1f} ms")
    ax.axvline(1e3 / report["rate_hz"], color="k", ls="--", lw=0.8, label="one frame period")
    ax.set_yscale("log")
    ax.set_xlabel("latency, intended send → subscriber (ms)")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"rtdenoise demo: {report['model']}, {'×'.join(map(str, report['shape']))} {report['dtype']} at "
        f"{report['rate_hz']:g} frames/s; SNR {report['snr_db']['raw']:.1f} → {report['snr_db']['denoised']:.1f} dB; "
        f"lost {report['frames_lost']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> int:
    report = run_demo(modality=args.modality, seconds=args.seconds, rate=args.rate, size=args.size, model=args.model,
                      backend=args.backend, photons=args.photons, seed=args.seed, json_path=args.json,
                      plot_path=args.plot, progress=not args.quiet, spin=args.spin,
                      separate=not args.in_process)
    print(format_report(report))
    if args.json:
        print(f"  report      {args.json}")
    if args.plot:
        print(f"  figure      {args.plot}")
    return 0 if report["frames_lost"] == 0 else 1
