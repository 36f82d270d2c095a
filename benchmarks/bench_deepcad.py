"""DeepCAD-RT (a published, non-causal self-supervised denoiser) as a baseline on the held-out movies.

    python benchmarks/bench_deepcad.py [--minutes 20] [--frames 600] [--seed 1234] [--cache DIR]
                                       [--results DIR] [--threads N] [--venv DIR] [--force]

For each level of ``bench_imaging_quality.LEVELS`` (the i-th with seed ``--seed + i``, so the
movies are exactly those of ``bench_imaging_quality.py``) DeepCAD-RT is trained, self-supervised,
on the noisy movie itself for ``--minutes`` of wall clock, then denoises the whole movie with its
own sliding-window inference. The output is scored against ``clean + static`` with
``bench_imaging_quality.score``. Writes ``<results>/deepcad.{json,md}`` (default
``benchmarks/results``); per level ``<cache>/<level-slug>.npz`` (``denoised``: T × H × W float32)
and ``<cache>/<level-slug>.json`` (timings, steps, window, latency, versions). A level whose
sidecar matches the run's settings is reused, not retrained (``--force`` retrains).

DeepCAD-RT runs in its own virtual environment (default ``<repo>/.venv-deepcad``, made on the first
run; nothing is added to the project's dependencies), by running this same file there as a worker
(``--worker train|test JOB.json``), because it needs numpy < 2. Facts behind the set-up:

- ``deepcad==1.3.0`` on PyPI holds no code: 1.2.0 is used. Its pinned ``gdown`` imports
  ``pkg_resources``, so ``setuptools<81``; ``numpy<2``; ``torch==2.13.0`` is installed first (the
  local CPU build; an unpinned torch would pull a multi-GB CUDA build).
- DeepCAD-RT calls ``.cuda()`` unconditionally. On CPU the worker makes ``torch.Tensor.cuda`` and
  ``torch.nn.Module.cuda`` return their object unchanged; ``torch.cuda.is_available()`` stays
  False, so its ``distribute_GPU`` skips ``nn.DataParallel`` and ``.cuda()`` of the model. Its
  ``save_model`` (called at each epoch's end) also exports ONNX from ``model.module``, which needs
  the ``onnx`` package and a DataParallel model: it is replaced by a no-op, and the final weights
  are saved once after training, as the only ``.pth`` its test class then loads.
- Time budget: ``training_class.train`` builds a ``DataLoader`` every epoch; the worker swaps the
  module's ``DataLoader`` for a subclass that stops yielding batches once ``--minutes`` have passed
  since ``training_class.run`` started, so training ends within one step of the budget (about
  0.7 s per 64 × 64 × 32 step on 2 cores) or after its 10 epochs, whichever comes first.
- Parameters follow DeepCAD-RT's demo pipelines (``demo_train_pipeline.py`` /
  ``demo_test_pipeline.py``): lr 5e-5, Adam betas (0.5, 0.999), fmap 16, scale_factor 1,
  train_datasets_size 6000 (capped at the number of distinct patch positions a short movie has),
  10 epochs, test overlap 0.4; patch 64 × 64 × 32 (patch_t 32: a training sample is 64 frames split
  into interlaced odd/even halves). Training overlap is the class default 0.5, since the demo's 0.25
  would leave the last 16 rows and columns of a 128-px movie out of every training patch.
- Its test class casts a float input's output to int32, which would destroy a movie of 1–10 photon
  counts. The movie is therefore written to TIFF as float32 counts × a gain that puts its 99.9th
  percentile at 1000; the output is divided by the same gain. DeepCAD-RT also rescales every
  output patch (by the square root of its raw-to-output sum ratio), so the result is mapped to
  counts with a least-squares affine fit to the noisy input (never to the clean truth); the fit's
  ``a, b`` are in the sidecar (``(denoised - b) / a`` undoes it).
- Inference takes 32-frame windows 19 frames apart and keeps the middle of each (frames 6–24):
  a frame's output needs up to 25 later frames (31 for the movie's first frames), so run live it
  would be at least 25 frames (0.83 s at 30 Hz) behind, before any compute time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VENV = REPO / ".venv-deepcad"
DEFAULT_CACHE = Path.home() / ".cache" / "rtdenoise-bench" / "deepcad"

DEEPCAD_VERSION = "1.2.0"
TORCH_VERSION = "2.13.0"
VENV_INSTALLS = ([f"torch=={TORCH_VERSION}"], ["setuptools<81", "numpy<2", f"deepcad=={DEEPCAD_VERSION}"])

PATCH_XY, PATCH_T = 64, 32
TRAIN_PARAMS = {"patch_x": PATCH_XY, "patch_y": PATCH_XY, "patch_t": PATCH_T, "overlap_factor": 0.5,
                "scale_factor": 1, "select_img_num": 100000, "train_datasets_size": 6000, "n_epochs": 10,
                "lr": 0.00005, "b1": 0.5, "b2": 0.999, "fmap": 16, "GPU": "0", "num_workers": 0,
                "visualize_images_per_epoch": False, "save_test_images_per_epoch": False}
TEST_PARAMS = {"patch_x": PATCH_XY, "patch_y": PATCH_XY, "patch_t": PATCH_T, "overlap_factor": 0.4,
               "scale_factor": 1, "test_datasize": 100000, "fmap": 16, "GPU": "0", "num_workers": 0,
               "visualize_images_per_epoch": False}
GAIN_TARGET = 1000.0  # the input's 99.9th percentile after the gain


class BenchError(RuntimeError):
    """A failure to report in one line, saying what to do."""


def log(msg: str) -> None:
    print(f"[bench_deepcad] {msg}", file=sys.stderr, flush=True)


def slug(level: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", level.lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# Main side (the project's interpreter): the venv, the movies, the scoring.


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def probe_venv(venv: Path) -> dict | None:
    """Versions inside the venv, or None when DeepCAD-RT does not import there."""
    code = ("import json, importlib.metadata as m, numpy, torch, deepcad.train_collection, deepcad.test_collection;"
            "print(json.dumps({'deepcad': m.version('deepcad'), 'torch': torch.__version__, 'numpy': numpy.__version__}))")
    if not venv_python(venv).exists():
        return None
    p = subprocess.run([str(venv_python(venv)), "-W", "ignore", "-c", code], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def ensure_venv(venv: Path, logfile: Path) -> dict:
    """Make the DeepCAD-RT venv once (torch first, then deepcad); return its versions."""
    versions = probe_venv(venv)
    if versions is not None:
        return versions
    log(f"making the DeepCAD-RT venv at {venv} (log: {logfile})")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as out:
        steps = [[sys.executable, "-m", "venv", str(venv)]]
        steps += [[str(venv_python(venv)), "-m", "pip", "install", *pkgs] for pkgs in VENV_INSTALLS]
        for cmd in steps:
            log("  " + " ".join(cmd[2:] if "pip" in cmd else cmd))
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise BenchError(f"could not build the DeepCAD-RT venv (`{' '.join(cmd[-3:])}` failed; see {logfile}): "
                                 f"delete {venv} and rerun, or pass --venv to a writable place")
    versions = probe_venv(venv)
    if versions is None:
        raise BenchError(f"DeepCAD-RT does not import in {venv} after installing: delete {venv} and rerun "
                         f"(see {logfile})")
    return versions


def run_worker(venv: Path, phase: str, job: Path, logfile: Path, level: str) -> None:
    with open(logfile, "a") as out:
        out.write(f"\n===== {phase} =====\n")
        out.flush()
        rc = subprocess.run([str(venv_python(venv)), "-W", "ignore", str(Path(__file__).resolve()),
                             "--worker", phase, str(job)], stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = [ln.strip() for ln in logfile.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
        raise BenchError(f"DeepCAD-RT {phase} failed on {level} (exit {rc}: {tail[-1] if tail else 'no output'}); "
                         f"see {logfile}, or delete {venv} and rerun if the venv is broken")


def affine_to_counts(den: np.ndarray, noisy: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, b`` with ``a * den + b ≈ noisy`` (the noisy input, not the clean truth)."""
    x, y = den.astype(np.float64).ravel(), noisy.astype(np.float64).ravel()
    xm, ym = x.mean(), y.mean()
    a = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return a, float(ym - a * xm)


def denoise_level(level: str, photons: float, mov: dict, args, versions: dict) -> tuple[np.ndarray, dict]:
    """Train and run DeepCAD-RT on one movie (or reuse the cached result): (denoised, sidecar)."""
    name = slug(level)
    npz, sidecar = args.cache / f"{name}.npz", args.cache / f"{name}.json"
    config = {"photons": photons, "frames": args.frames, "seed": mov["seed"], "minutes": args.minutes,
              "threads": args.threads, "deepcad_version": versions["deepcad"], "patch": [PATCH_T, PATCH_XY, PATCH_XY]}
    if not args.force and npz.exists() and sidecar.exists():
        side = json.loads(sidecar.read_text())
        if side.get("config") == config:
            log(f"{level}: reusing {npz} (--force retrains)")
            return np.load(npz)["denoised"], side
    work = args.cache / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    noisy = mov["noisy"]
    gain = GAIN_TARGET / float(np.percentile(noisy, 99.9))
    np.save(work / "input.npy", (noisy * gain).astype(np.float32))
    job = work / "job.json"
    job.write_text(json.dumps({"work": str(work), "name": name, "minutes": args.minutes,
                               "seed": mov["seed"], "threads": args.threads}))
    logfile = work / "deepcad.log"
    log(f"{level}: training DeepCAD-RT for {args.minutes:g} min on {noisy.shape[0]} frames (log: {logfile})")
    run_worker(args.venv, "train", job, logfile, level)
    trained = json.loads((work / "train.json").read_text())
    log(f"{level}: {trained['steps']} steps in {trained['train_s'] / 60:.1f} min; denoising the whole movie")
    run_worker(args.venv, "test", job, logfile, level)
    tested = json.loads((work / "test.json").read_text())
    out = np.load(work / "output.npy").astype(np.float32) / gain
    if out.shape != noisy.shape:
        raise BenchError(f"DeepCAD-RT returned shape {out.shape} for a {noisy.shape} movie on {level}; see {logfile}")
    a, b = affine_to_counts(out, noisy)
    denoised = (a * out + b).astype(np.float32)
    fs = float(mov["fs"])
    side = {"config": config, "level": level, **trained, **tested,
            "infer_fps": noisy.shape[0] / tested["infer_s"],
            "latency_s": tested["latency_frames"] / fs, "fs": fs,
            "input_gain": gain, "affine_to_counts": {"a": a, "b": b},
            "deepcad_version": versions["deepcad"], "torch_version": versions["torch"],
            "numpy_version_in_venv": versions["numpy"], "date": time.strftime("%Y-%m-%d %H:%M")}
    np.savez(npz, denoised=denoised)
    sidecar.write_text(json.dumps(side, indent=2))
    log(f"{level}: inference {side['infer_fps']:.1f} frames/s, window {side['window_frames']} frames, "
        f"latency {side['latency_frames']} frames; saved {npz}")
    return denoised, side


INTRO = ("DeepCAD-RT {deepcad_version} (torch {torch_version}, CPU) trained on each noisy movie itself for "
         "{minutes:g} min of wall clock (patch 64 × 64 × 32, its demo parameters), then its own sliding-window "
         "inference over the whole movie; output mapped to counts by a least-squares affine fit to the noisy input. "
         "Same movies as `bench_imaging_quality.py` (128 × 128 px, 30 Hz, PMT noise, decay 2.5 s). Latency: the "
         "most later frames an output frame needs, in steady state (the movie's first frames need more); compute "
         "time comes on top.")
HEADER = ("| | SNR dB | PSNR dB | trace corr | transients within 10 % (median error, n) | train min (steps) "
          "| inference frames/s | latency frames (s) |")


def table_row(name: str, s: dict, d: dict | None) -> str:
    """One markdown row: the scores, then DeepCAD-RT's costs (``d``; None for the raw movie)."""
    tr = s["transients"]
    ev = "-" if tr["within_10pct"] is None else f"{tr['within_10pct']:.0%} ({tr['median_rel_error']:.0%}, n={tr['events']})"
    cost = " | | |" if d is None else (f" {d['train_minutes']:.1f} ({d['steps']}) | {d['infer_fps']:.1f} "
                                        f"| {d['latency_frames']} ({d['latency_s']:.2f}) |")
    return f"| {name} | {s['snr_db']:.2f} | {s['psnr_db']:.2f} | {s['trace_corr']:.3f} | {ev} |{cost}"


def write_results(res: dict, results: Path) -> str:
    results.mkdir(parents=True, exist_ok=True)
    (results / "deepcad.json").write_text(json.dumps(res, indent=2, default=str))
    md = ["# DeepCAD-RT (non-causal, self-supervised per movie) on the held-out synthetic movies", "",
          f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
          INTRO.format(**res), ""]
    for level, r in res["levels"].items():
        md += [f"## {level}", "", HEADER, "|---|---|---|---|---|---|---|---|",
               table_row("raw", r["raw"], None), table_row("deepcad-rt", r["deepcad"], r["deepcad"]), ""]
    text = "\n".join(md) + "\n"
    (results / "deepcad.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall clock per movie")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234, help="the i-th level uses seed + i")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--results", type=Path, default=HERE / "results", help="where deepcad.{json,md} go")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in DeepCAD-RT")
    ap.add_argument("--force", action="store_true", help="retrain even where a cached result matches")
    ap.add_argument("--worker", nargs=2, metavar=("PHASE", "JOB"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    if args.frames <= 2 * PATCH_T:
        ap.error(f"--frames must be more than {2 * PATCH_T} (DeepCAD-RT needs two training patches in time)")
    args.cache, args.venv = args.cache.expanduser().resolve(), args.venv.expanduser().resolve()

    sys.path.insert(0, str(HERE))
    from bench_imaging_quality import LEVELS, held_out, score

    try:
        versions = ensure_venv(args.venv, args.cache / "venv-install.log")
        log(f"venv {args.venv}: deepcad {versions['deepcad']}, torch {versions['torch']}, numpy {versions['numpy']}")
        res = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
               "command": "python benchmarks/bench_deepcad.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "minutes": args.minutes, "frames": args.frames, "seed": args.seed,
               "deepcad_version": versions["deepcad"], "torch_version": versions["torch"],
               "train_params": TRAIN_PARAMS, "test_params": TEST_PARAMS, "levels": {}}
        for i, (level, photons) in enumerate(LEVELS.items()):
            log(f"{level}: simulating {args.frames} frames (seed {args.seed + i})")
            mov = held_out(photons, args.frames, args.seed + i) | {"seed": args.seed + i}
            denoised, side = denoise_level(level, photons, mov, args, versions)
            log(f"{level}: scoring")
            ref = mov["clean"] + mov["static"]
            keep = ("steps", "epochs", "infer_s", "infer_fps", "window_frames", "latency_frames",
                    "latency_frames_startup", "latency_s", "affine_to_counts", "input_gain")
            res["levels"][level] = {
                "seed": args.seed + i, "raw": score(mov["noisy"], ref, mov),
                "deepcad": score(denoised, ref, mov) | {k: side[k] for k in keep}
                | {"train_minutes": side["train_s"] / 60, "cache": str(args.cache / f"{slug(level)}.npz")}}
            d = res["levels"][level]["deepcad"]
            log(f"{level}: SNR {d['snr_db']:.2f} dB, PSNR {d['psnr_db']:.2f} dB, trace corr {d['trace_corr']:.3f}")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(write_results(res, args.results))
    return 0


# ---------------------------------------------------------------------------------------------
# Worker side: runs inside the venv (numpy < 2, deepcad 1.2.0), started by `run_worker`.


def cpu_only() -> None:
    """Make DeepCAD-RT's unconditional ``.cuda()`` calls no-ops on a machine without CUDA."""
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    assert not torch.cuda.is_available(), "this worker is for CPU; DeepCAD-RT runs unpatched on a GPU"


def budget_loader(deadline: float, count: dict):
    """A DataLoader that stops yielding batches once ``time.monotonic()`` passes ``deadline``."""
    from torch.utils.data import DataLoader

    class BudgetLoader(DataLoader):
        def __iter__(self):
            if time.monotonic() < deadline:
                count["epochs"] += 1
            for batch in super().__iter__():
                if time.monotonic() >= deadline:
                    return
                count["steps"] += 1
                yield batch

    return BudgetLoader


def max_patches(frames: int, size: int) -> int:
    """DeepCAD-RT's train_datasets_size at most: beyond it its temporal patch gap becomes 0."""
    gap = int(PATCH_XY * (1 - TRAIN_PARAMS["overlap_factor"]))
    return ((size - PATCH_XY) // gap + 1) ** 2 * (frames - 2 * PATCH_T + 1)


def worker_train(job: dict, work: Path) -> dict:
    import tifffile
    import torch
    from deepcad import train_collection

    movie = np.load(work / "input.npy")
    data = work / "data"
    data.mkdir(exist_ok=True)
    tifffile.imwrite(data / f"{job['name']}.tif", movie)  # DeepCAD-RT reads every TIFF in the folder

    class Training(train_collection.training_class):
        def save_model(self, epoch, iteration):  # theirs also exports ONNX (needs onnx and DataParallel)
            pass

    size = min(TRAIN_PARAMS["train_datasets_size"], max_patches(movie.shape[0], min(movie.shape[1:])))
    params = TRAIN_PARAMS | {"train_datasets_size": size, "datasets_path": str(data), "pth_dir": str(work / "pth"),
                             "onnx_dir": str(work / "onnx"), "output_dir": str(work / "results")}
    tc = Training(params)
    count = {"steps": 0, "epochs": 0}
    t0 = time.monotonic()
    train_collection.DataLoader = budget_loader(t0 + job["minutes"] * 60, count)
    tc.run()
    train_s = time.monotonic() - t0
    torch.save(tc.local_model.state_dict(), Path(tc.pth_path) / "final.pth")
    return {"train_s": train_s, "steps": count["steps"], "epochs": count["epochs"],
            "patches_per_epoch": len(tc.name_list), "model": Path(tc.pth_path).name,
            "train_params": {k: v for k, v in params.items() if k in TRAIN_PARAMS}}


def latency(tc) -> dict:
    """From the test class's own window coordinates: the most later frames an output frame needs."""
    from deepcad.data_process import test_preprocess_chooseOne

    tc.print_img_name = False
    _, _, coords, *_ = test_preprocess_chooseOne(tc, 0)
    lags = {c["init_s"]: int(c["end_s"]) - 1 - int(c["stack_start_s"]) for c in coords.values()}
    steady = [lag for start, lag in lags.items() if start > 0] or list(lags.values())
    return {"window_frames": tc.patch_t, "latency_frames": max(steady), "latency_frames_startup": max(lags.values())}


def worker_test(job: dict, work: Path) -> dict:
    import tifffile
    from deepcad import test_collection

    trained = json.loads((work / "train.json").read_text())
    out_dir = work / "results"
    shutil.rmtree(out_dir, ignore_errors=True)
    params = TEST_PARAMS | {"datasets_path": str(work / "data"), "pth_dir": str(work / "pth"),
                            "denoise_model": trained["model"], "output_dir": str(out_dir)}
    tc = test_collection.testing_class(params)
    t0 = time.monotonic()
    tc.run()
    infer_s = time.monotonic() - t0
    outputs = sorted(out_dir.rglob("*_output.tif"))
    if len(outputs) != 1:
        raise RuntimeError(f"expected one *_output.tif under {out_dir}, found {len(outputs)}")
    np.save(work / "output.npy", tifffile.imread(outputs[0]).astype(np.float32))
    return {"infer_s": infer_s, "output_tif": str(outputs[0]),
            "test_params": {k: v for k, v in params.items() if k in TEST_PARAMS}} | latency(tc)


def worker(phase: str, job_path: str) -> int:
    import random

    import torch

    job = json.loads(Path(job_path).read_text())
    work = Path(job["work"])
    os.chdir(work)  # DeepCAD-RT writes some folders relative to the working directory
    torch.set_num_threads(job["threads"])
    random.seed(job["seed"])
    np.random.seed(job["seed"])
    torch.manual_seed(job["seed"])
    cpu_only()
    result = {"train": worker_train, "test": worker_test}[phase](job, work)
    (work / f"{phase}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
