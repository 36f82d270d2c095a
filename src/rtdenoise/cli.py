"""The ``rtdenoise`` command: every verb parses its arguments, calls one function, prints.

Each verb has a ``_add_<verb>(sub)`` that declares its arguments and a ``cmd_<verb>(args)``
that calls into the package. Errors a user can fix (bad files, shapes, values) print one
line ``rtdenoise <verb>: error: ...`` and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rtdenoise.backends.base import BACKENDS


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------------------- simulate


def _add_simulate(sub) -> None:
    from rtdenoise.model.config import MODALITIES
    from rtdenoise.synth import ImagingConfig, SpectralConfig

    fs, ifs = SpectralConfig().fs, ImagingConfig().fs
    p = sub.add_parser("simulate", help="write a synthetic recording (spectra or a movie) with its ground truth")
    p.add_argument("out", help="output .npz/.h5/.mat (noisy, clean, static, traces, ..., config_json)")
    p.add_argument("--modality", choices=MODALITIES, default="spectral",
                   help="spectral: fiber-photometry spectra (T, W); imaging: a two-photon-like movie (T, H, W)")
    p.add_argument("--frames", type=int, required=True, help="number of frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photons", type=float, default=None,
                   help="counts at the emission peak, or photons per pixel per frame at the brightest somata (default: drawn)")
    p.add_argument("--shape", type=int, nargs=2, default=None, metavar=("H", "W"), help="imaging: frame size (default 128 128)")
    p.add_argument("--read-noise", type=float, default=None, help="detector read noise, counts rms (default: drawn)")
    p.add_argument("--fs", type=float, default=None,
                   help=f"frame rate, Hz (default {fs:g} for spectra; movies: drawn from {ifs[0]:g}–{ifs[1]:g}, log-uniform)")
    p.add_argument("--dark", help="recorded dark frames (.npy/.npz/.tif/.h5/.mat) instead of the detector model: "
                                  "spectra (T, W), with --light; movies (T, H, W), with or without --light")
    p.add_argument("--light", help="recorded steady-light frames (spectra: give with --dark)")
    _add_detector(p)
    p.set_defaults(func=cmd_simulate)


def _add_detector(p) -> None:
    p.add_argument("--detector", choices=["pmt", "scmos"], default=None,
                   help="movies without --dark/--light: the detector model, pmt (two-photon, default) or scmos "
                        "(a camera)")


def cmd_simulate(args) -> int:
    from rtdenoise.synth import simulate_file

    print(simulate_file(args.out, args.frames, modality=args.modality, seed=args.seed, photons=args.photons,
                        fs=args.fs, shape=args.shape, read_noise=args.read_noise, dark=args.dark, light=args.light,
                        detector=args.detector))
    return 0


# ----------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    from rtdenoise.model.config import FAMILIES, MODALITIES, default_config
    from rtdenoise.train import TrainConfig

    m, im, t = default_config("spectral"), default_config("imaging"), TrainConfig()
    p = sub.add_parser("train", help="train a causal denoiser on synthetic spectra or movies + instrument noise")
    p.add_argument("out", help="checkpoint to write (.pt); rewritten at every validation")
    # Architecture flags default to None: with --init only the flags given are checked against the model.
    p.add_argument("--modality", choices=MODALITIES, default=None, help="what the model denoises (default spectral)")
    p.add_argument("--arch", choices=list(FAMILIES), default=None, help=f"default {m.arch} (spectral), {im.arch} (imaging)")
    p.add_argument("--lag", type=int, default=None, help=f"frames of lookahead (default {m.lag}: strictly causal)")
    p.add_argument("--depth", type=int, default=None, help=f"default {m.depth} (spectral), {im.depth} (imaging)")
    p.add_argument("--width", type=int, default=None, help=f"default {m.width} (spectral), {im.width} (imaging)")
    p.add_argument("--rank", type=int, default=None, help=f"default {m.rank}")
    p.add_argument("--taps", type=int, default=None, help=f"default {m.taps}")
    p.add_argument("--hemoglobin", action="store_true", default=None,
                   help="subspace: put hemoglobin's two absorption spectra in the subspace (4 of its directions) "
                        "instead of estimating them from data")
    p.add_argument("--sensor", action="store_true", default=None,
                   help="with --hemoglobin: the sensor's emission spectrum is one more known direction (each "
                        "instance's own in training; the lab's sensor given to the trained model to run it)")
    p.add_argument("--sensor-shift", type=float, default=0.0, metavar="NM",
                   help="with --sensor: train on each instance's sensor spectrum shifted by up to ±NM nm, so the "
                        "model tolerates a given spectrum that far off (default 0: exact)")
    p.add_argument("--mix", action="store_true", default=None,
                   help="subspace: each coefficient's predicted filter takes every coefficient's last taps values")
    p.add_argument("--patch", type=int, nargs=2, default=list(t.patch), metavar=("H", "W"), help="imaging: pixels per instance")
    p.add_argument("--dilations", default=None,
                   help="comma-separated, one per layer (default: the model's own at its default depth, else all 1)")
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--batch", type=int, default=None, help=f"instances per step (default {t.batch}; 8 windows with --self-supervised)")
    p.add_argument("--window", type=int, default=t.window, help="frames per instance (default 256 spectral, 32 imaging)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {t.lr:g}; {t.lr / 4:g} with --init; 4e-4 with --self-supervised)")
    p.add_argument("--workers", type=int, default=t.workers, help="processes making instances beside the optimizer")
    p.add_argument("--threads", type=int, default=t.threads, help="torch threads (default: the cores the workers leave)")
    p.add_argument("--device", default=t.device,
                   help="where the optimizer runs: cpu (default) or cuda (an NVIDIA GPU; the workers still draw the "
                        "scenes on the CPU, so give it several)")
    p.add_argument("--pooled-loss", type=float, default=0.0, metavar="W",
                   help="imaging: add W times the error of 8x8-pixel block means (a soma's scale) to the per-pixel "
                        "error (default 0)")
    p.add_argument("--cpu-instances", action="store_true",
                   help="with --device cuda: make every instance on the CPU workers (by default the PMT noise and the "
                        "front end of movies are added on the GPU, the workers drawing only scenes; --dark/--light and "
                        "--detector scmos noise is always made on the workers)")
    p.add_argument("--settled", type=float, default=t.settled, metavar="SHARE",
                   help="imaging: share of instances whose running baseline starts settled, as a live stream's is "
                        "after its first 2·horizon frames (default 0: all start cold)")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--dark", help="recorded dark frames, replacing the detector model: spectra (T, W), with --light; "
                                  "movies (T, H, W) at least as large as --patch, with or without --light")
    p.add_argument("--light", help="recorded steady-light frames (spectra: give with --dark)")
    _add_detector(p)
    p.add_argument("--prior", type=float, default=None, metavar="F",
                   help="spectra, with --init and --dark/--light: the share of instances drawn with the noise the model "
                        "was trained on (the detector model), so calibrating to your rig does not forget it (default "
                        "0.25; movies fine-tune on the recordings alone)")
    p.add_argument("--name", help="model name stored in the checkpoint (default: file stem)")
    p.add_argument("--resume", action="store_true", help="continue from OUT and OUT.state")
    p.add_argument("--self-supervised", default=None, metavar="MOVIE",
                   help="imaging: fine-tune --init on your own noisy movie (T, H, W), no clean data needed: the model is "
                        "set to the movie's counts per photon and dark level (its photon transfer), then trained for "
                        "--minutes (default 5; 0: the units alone) by photon splitting: it sees part of each pixel's "
                        "photons and learns to predict the rest (benchmarks/results/selfsup.md)")
    p.add_argument("--keep", type=float, default=None, metavar="P",
                   help="with --self-supervised: the share of each pixel's photons the network sees, the rest its "
                        "target (default 0.8)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="with --self-supervised: keep the model's gain and offset (counts already in photons)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model (a .pt or shipped name) and fine-tune it: with --dark/--light, calibrate it "
                        "to your rig's recorded noise in minutes (its config is kept); with --self-supervised, the imaging "
                        "model to start from (default: imaging-lag0)")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from rtdenoise.model.config import default_config
    from rtdenoise.synth import SpectralConfig, movie_noise_from_args, noise_from_args
    from rtdenoise.train import TrainConfig, calibration_noise, train

    if args.self_supervised:
        if args.device != "cpu":
            raise ValueError("--device is for training on synthetic instances; --self-supervised fine-tuning runs on the CPU")
        return _finetune(args)
    if not args.calibrate or args.keep is not None:
        raise ValueError(f"{'--keep' if args.calibrate else '--no-calibrate'} is for --self-supervised fine-tuning")
    given = {k: getattr(args, k) for k in ("arch", "depth", "width", "lag", "rank", "taps", "mix") if getattr(args, k) is not None}
    if args.hemoglobin:
        if args.modality == "imaging":
            raise ValueError("--hemoglobin is for spectra: it puts hemoglobin's absorption spectra in the subspace")
        band = SpectralConfig()
        given["hemoglobin"] = [band.wl_start, band.wl_stop]
    if args.sensor:
        if not args.hemoglobin:
            raise ValueError("--sensor goes with --hemoglobin: the sensor's spectrum is known beside hemoglobin's")
        given["sensor"] = []
    dilations = None if args.dilations is None else [int(d) for d in args.dilations.split(",") if d.strip()]
    if args.prior is not None and not 0.0 <= args.prior < 1.0:
        raise ValueError(f"--prior is a share of the instances, in [0, 1); got {args.prior}")
    init = model = None
    if args.init:
        init = _init_model(args, given, dilations)
        args.modality = init.modality
    else:
        args.modality = args.modality or "spectral"
        model = default_config(args.modality, **given, dilations=dilations)
    d = TrainConfig()
    cfg = TrainConfig(
        steps=args.steps, minutes=args.minutes, batch=d.batch if args.batch is None else args.batch, window=args.window,
        lr=args.lr if args.lr is not None else d.lr / 4 if init else d.lr,
        workers=args.workers, seed=args.seed, patch=tuple(args.patch), threads=args.threads, settled=args.settled,
        device=args.device, instances_on_device=not args.cpu_instances, pooled_loss=args.pooled_loss,
        sensor_shift_nm=args.sensor_shift,
    )
    if args.modality == "imaging":
        if args.prior:
            raise ValueError("--prior mixes the detector model into the calibration of a spectral model; movies "
                             "fine-tune on their --dark/--light recordings alone: drop --prior")
        signal = None
        noise = movie_noise_from_args(args.dark, args.light, detector=args.detector)
        # (non-PMT noise is made on the CPU workers even with --device cuda: train() puts only PMT on the card)
    else:
        if args.detector is not None:
            raise ValueError(f"--detector {args.detector} is for movies (--modality imaging); spectra train on the "
                             "spectrometer's detector model or --dark/--light recordings")
        signal = SpectralConfig()
        noise = noise_from_args(args.dark, args.light, n_bins=signal.n_bins)
        prior = 0.25 if args.prior is None else args.prior
        if init is not None and args.dark and prior > 0:
            noise = calibration_noise(noise, init, prior)
    ckpt = train(
        args.out, model=model, signal=signal, noise=noise, config=cfg, name=args.name, resume=args.resume,
        command="rtdenoise " + " ".join(sys.argv[1:]), init=init,
    )
    pv = ckpt.provenance
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes and reports
        return 0
    before = f", {pv['init']['name']} before {pv['init']['val_loss']:.4f}" if "init" in pv else ""
    print(
        f"wrote {args.out}: {pv['steps']} steps, {pv['instances']} instances, val loss {pv['final_val_loss']:.4f} "
        f"(identity {pv['val_loss_raw']:.4f}{before}), {pv['wall_time_s'] / 60:.1f} min"
    )
    return 0


def _init_model(args, given: dict, dilations):
    """The model ``--init`` names; the architecture flags may not contradict it (its config is kept)."""
    from rtdenoise.model.checkpoint import load

    init = load(args.init)
    c = init.config
    asked = {**given, **({"dilations": dilations} if dilations is not None else {})}
    clash = {k: v for k, v in asked.items() if v != getattr(c, k)}
    if clash:
        raise ValueError(f"--init {args.init}: its config is kept, but {', '.join(f'--{k} {v}' for k, v in clash.items())} "
                         f"differs from it ({', '.join(f'{k}={getattr(c, k)}' for k in clash)}); drop the flag, or train "
                         "from scratch without --init")
    if args.modality is not None and init.modality != args.modality:
        raise ValueError(f"--init {args.init} is a {init.modality} model, not {args.modality}")
    return init


def _finetune(args) -> int:
    from rtdenoise.model.checkpoint import DEFAULT_MODELS
    from rtdenoise.selfsup import SelfSupConfig, finetune

    d = SelfSupConfig()
    given = {"minutes": args.minutes, "batch": args.batch, "keep": args.keep, "lr": args.lr}
    cfg = SelfSupConfig(**{k: getattr(d, k) if v is None else v for k, v in given.items()}, window=args.window or 32,
                        patch=tuple(args.patch), seed=args.seed, threads=args.threads, calibrate=args.calibrate)
    ck = finetune(args.out, args.self_supervised, model=args.init or DEFAULT_MODELS["imaging"], config=cfg, command="rtdenoise " + " ".join(sys.argv[1:]))
    s = ck.provenance["self_supervised"]
    print(f"wrote {args.out}: {s['steps']} steps on {args.self_supervised}, validation loss {s['val_loss']:.4f} "
          f"(before {s['val_loss_before']:.4f}), {s['wall_time_s'] / 60:.1f} min; "
          f"{s['gain']:.3g} counts per photon, dark level {s['offset']:.4g}" + (f"; no steps: {s['skipped']}" if s["skipped"] else ""))
    return 0


# ----------------------------------------------------------------------------- info


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print what a model checkpoint says about itself")
    p.add_argument("model", nargs="?", default=None, help="a .pt file or shipped model name (default: the default model)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from rtdenoise.model.checkpoint import format_info, load

    info = load(args.model).info()
    if args.json:
        _print_json(info)
        return 0
    print(format_info(info))
    return 0


def _add_set_sensor(sub) -> None:
    p = sub.add_parser("set-sensor", help="give a model trained with --sensor your sensor's emission spectrum")
    p.add_argument("model", help="a .pt file trained with --hemoglobin --sensor")
    p.add_argument("spectrum", help="your sensor's emission spectrum: a CSV/TSV table of wavelength (nm) and value "
                   "(FPbase's download works; header lines are skipped), or a .npy of one value per bin")
    p.add_argument("-o", "--output", required=True, help="the model for this sensor (.pt): denoise and serve it as any")
    p.add_argument("--column", type=int, default=-1,
                   help="which value column of the table (1 = the first after the wavelength; default the last)")
    p.set_defaults(func=cmd_set_sensor)


def cmd_set_sensor(args) -> int:
    import numpy as np

    from rtdenoise.io import load_spectrum
    from rtdenoise.model.checkpoint import load

    ck = load(args.model)
    if ck.config.sensor is None:
        raise ValueError(f"{args.model} was trained without --sensor: it has no known sensor direction to give")
    values = load_spectrum(args.spectrum, ck.wavelengths, column=args.column)
    out = ck.for_sensor(values)
    out.name = f"{ck.name} for {Path(args.spectrum).stem}"
    out.provenance = {**ck.provenance, "sensor": {"file": str(args.spectrum), "column": args.column}}
    out.save(args.output)
    wl, on = np.asarray(ck.wavelengths), np.flatnonzero(values)
    print(f"wrote {args.output}: {ck.name} with the sensor of {args.spectrum} "
          f"(peak {wl[np.argmax(values)]:.0f} nm, non-zero {wl[on[0]]:.0f}-{wl[on[-1]]:.0f} nm)")
    return 0


# ----------------------------------------------------------------------------- denoise


def _add_follow_motion(p) -> None:
    p.add_argument("--follow-motion", action=argparse.BooleanOptionalAction, default=None,
                   help="movies: the front end follows the field of view's rigid motion (--no-follow-motion: a still "
                        "field, 4-5 ms less a 512x512 frame on 2 CPU cores); default: as the model says (the shipped "
                        "imaging models follow it)")


def _add_denoise(sub) -> None:
    p = sub.add_parser("denoise", help="denoise a recording file (time first) with a trained model")
    p.add_argument("input", help=".npy/.npz/.tif/.h5/.mat, time first: frames × wavelengths or frames × H × W "
                   "(npy, TIFF stacks and HDF5 are read block by block: files larger than memory are fine)")
    p.add_argument("output", help="where to write the denoised frames (same formats); written only when complete")
    p.add_argument("--model", default=None, help="a .pt file or shipped model name (default: spectral-lag0 for spectra, imaging-lag0 for movies)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--chunk", type=int, default=None, help="frames per engine step (1 = frame by frame, as the live service); any value gives the same frames, to float32 rounding (default 1024)")
    p.add_argument("--key", default=None, help="array name inside .npz/.h5/.mat (default: noisy, frames or data)")
    p.add_argument("--dtype", choices=["float32", "input"], default="float32",
                   help="output type: float32, or the input's own (integers rounded and clipped to its range)")
    _add_follow_motion(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_denoise)


def cmd_denoise(args) -> int:
    from rtdenoise.denoise import denoise_file

    s = denoise_file(
        args.input, args.output, model=args.model, backend=args.backend, chunk=args.chunk, key=args.key,
        dtype=args.dtype, progress=not args.quiet, follow_motion=args.follow_motion,
    )
    print(
        f"wrote {s['output']}: {s['frames']} frames with {s['model']} on {s['backend']} "
        f"({s['ms_per_frame']:.3f} ms/frame, lag {s['lag']})"
    )
    return 0


# ----------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    from rtdenoise.backends.export import DEFAULT_OPSET

    p = sub.add_parser("export", help="export a model's streaming step to ONNX (for onnxruntime and TensorRT)")
    p.add_argument("model", nargs="?", default=None, help="a .pt file or shipped model name (default: the default model)")
    p.add_argument("--onnx", default=None, help="output .onnx (default: engines/NAME.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from rtdenoise.backends.export import export_onnx, read_onnx_metadata
    from rtdenoise.model.checkpoint import load

    ckpt = load(args.model)
    path = export_onnx(ckpt, args.onnx or Path("engines") / f"{ckpt.name}.onnx", opset=args.opset)
    io = read_onnx_metadata(path)["io"]
    print(f"wrote {path}: {ckpt.name}, opset {args.opset}, dynamic axes batch and chunk")
    print(f"inputs   {', '.join(io['inputs'])}")
    print(f"outputs  {', '.join(io['outputs'])}")
    if io["omitted_states"]:
        print(f"omitted  {', '.join(io['omitted_states'])} (no rows: zeros made inside the graph)")
    return 0


# ----------------------------------------------------------------------------- build-engine


def _add_build_engine(sub) -> None:
    import inspect

    from rtdenoise.backends.trt_engine import build_plan

    d = {k: v.default for k, v in inspect.signature(build_plan).parameters.items()}
    p = sub.add_parser("build-engine", help="build a TensorRT plan for this GPU from a model or an exported .onnx")
    p.add_argument("model", nargs="?", default=None, help="a .onnx from `rtdenoise export`, a .pt file or a shipped model name")
    p.add_argument("--plan", default=None, help="output plan (default: engines/NAME.plan; metadata in NAME.plan.json)")
    p.add_argument("--fp16", action="store_true", help="allow half-precision layers")
    p.add_argument("--max-batch", type=int, default=d["max_batch"], help="most streams per engine call")
    p.add_argument("--max-chunk", type=int, default=d["max_chunk"], help="most frames per engine call (longer chunks are split)")
    p.add_argument("--workspace-mb", type=int, default=d["workspace_mb"], help="TensorRT builder workspace, MiB")
    p.set_defaults(func=cmd_build_engine)


def cmd_build_engine(args) -> int:
    from rtdenoise.backends.trt_engine import _import_trt, build_plan, read_plan_info

    _import_trt()  # before any work: without TensorRT this is an ImportError saying what to install
    if args.model is not None and str(args.model).endswith(".onnx"):
        from rtdenoise.backends.export import read_onnx_metadata

        source, name = args.model, read_onnx_metadata(args.model)["checkpoint"]["name"]
    else:
        from rtdenoise.model.checkpoint import load

        source = load(args.model)
        name = source.name
    plan = build_plan(
        source, args.plan or Path("engines") / f"{name}.plan", fp16=args.fp16, max_batch=args.max_batch,
        max_chunk=args.max_chunk, workspace_mb=args.workspace_mb,
    )
    info = read_plan_info(plan)
    gpu = info["gpu"]
    print(
        f"wrote {plan} (+ .json): {name} for {gpu['name']} (sm {'.'.join(map(str, gpu['compute_capability']))}), "
        f"TensorRT {info['tensorrt']}, {'fp16' if info['fp16'] else 'fp32'}, "
        f"batch 1..{info['max_batch']}, chunk 1..{info['max_chunk']}"
    )
    return 0


# ----------------------------------------------------------------------------- serve, replay, status


def _add_serve(sub) -> None:
    from rtdenoise.stream.config import ServiceConfig

    d = ServiceConfig()
    p = sub.add_parser("serve", help="run the live service: frames in over ZeroMQ, denoised frames out")
    p.add_argument("--model", default=d.model, help="a .pt file or shipped model name (default: the shipped default)")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="auto: TensorRT on a GPU, else CUDA torch, else the fastest CPU backend measured for the model")
    p.add_argument("--sub", default=d.sub, help="input endpoint (connects; see --bind-sub)")
    p.add_argument("--bind-sub", action="store_true", default=d.bind_sub, help="bind the input instead of connecting to the acquisition")
    p.add_argument("--pub", default=d.pub, help="output endpoint (bound); 'tcp://127.0.0.1:*' = a free port")
    p.add_argument("--control", default=d.control,
                   help="control endpoint (bound, JSON status/reset/stop); default a local IPC socket only this "
                        "user reaches; 'ipc://*' = a new private one")
    p.add_argument("--allow-tcp-control", action="store_true",
                   help="allow a plaintext tcp:// --control (any local process could then stop the service)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="frames per stream waiting for the engine; beyond, the oldest are dropped")
    p.add_argument("--max-queue-bytes", type=int, default=d.max_queue_bytes,
                   help=f"and at most this many bytes of them per stream (default {d.max_queue_bytes // 2**20} MiB: "
                        "128 frames of 512x512 uint16)")
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="streams held at once; messages of more are rejected")
    p.add_argument("--max-streams-per-sender", type=int, default=d.max_streams_per_sender, metavar="N",
                   help="new streams one sender may open (its CURVE key, else its address); default no limit")
    p.add_argument("--stream-idle", type=float, default=d.stream_idle_s, metavar="SECONDS",
                   help=f"forget a stream after this long without a message, flushing what it owes (0: never; default {d.stream_idle_s:g})")
    p.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes,
                   help=f"larger headers are rejected (too_large); at most {d.max_header_bytes // 1024} KiB")
    p.add_argument("--max-payload-bytes", type=int, default=d.max_payload_bytes,
                   help="larger payloads are rejected; a part over this (ZMQ_MAXMSGSIZE) closes its connection")
    p.add_argument("--curve-keys", default=d.curve_keys, metavar="DIR",
                   help="CURVE encryption + authentication on every socket: DIR holds server.key_secret and "
                        "authorized/*.key (publish and subscribe), authorized/{publish,subscribe,control}/*.key "
                        "(one role each); make them with `rtdenoise keys DIR`")
    p.add_argument("--subscribe", action="append", default=None, metavar="PREFIX",
                   help="take only streams whose name starts with PREFIX (repeatable; default all)")
    _add_follow_motion(p)
    p.add_argument("--threads", type=int, default=d.threads, help="the engine's CPU threads (default 1: lowest latency for one frame)")
    p.add_argument("--spin", action="store_true",
                   help="latency mode: receive and denoise on one thread that polls without sleeping (lowest "
                        "latency; keeps one CPU core busy all the time)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"most streams with frames of one size stepped in one engine call (default {d.max_batch}; "
                        "1: each stream alone, bit for bit its offline result; together, equal to float rounding). "
                        "Streams go together only where that measures faster")
    p.add_argument("--warm-shape", action="append", type=_frame_shape, default=None, metavar="HxW",
                   help="a frame shape to step once at start, at each group size, so the first frames of its "
                        "streams do not wait while a GPU picks its kernels (repeatable; e.g. 512x512, or 152)")
    p.add_argument("--json", action="store_true", help="print the final stats as JSON")
    p.add_argument("--verbose", action="store_true", help="log every rejection (default: first ones and every 1000th)")
    p.set_defaults(func=cmd_serve)


def _frame_shape(text: str) -> tuple[int, ...]:
    """'512x512' or '152' -> a frame shape (argparse type)."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a frame shape like 512x512 or 152, got {text!r}")
    return shape


def cmd_serve(args) -> int:
    import logging

    from rtdenoise.stream.config import ServiceConfig
    from rtdenoise.stream.service import format_status, serve

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="rtdenoise serve: %(levelname)s: %(message)s")
    cfg = ServiceConfig(
        model=args.model, backend=args.backend, follow_motion=args.follow_motion, sub=args.sub, bind_sub=args.bind_sub, pub=args.pub,
        control=args.control, allow_tcp_control=args.allow_tcp_control, max_queue=args.max_queue,
        max_queue_bytes=args.max_queue_bytes,
        max_streams=args.max_streams, max_streams_per_sender=args.max_streams_per_sender, stream_idle_s=args.stream_idle,
        subscribe=tuple(args.subscribe) if args.subscribe else ServiceConfig.subscribe, threads=args.threads,
        spin=args.spin,
        max_batch=args.max_batch,
        warm_shapes=tuple(args.warm_shape or ()),
        curve_keys=args.curve_keys,
        max_header_bytes=args.max_header_bytes, max_payload_bytes=args.max_payload_bytes,
    )

    def ready(svc) -> None:
        a = svc.addresses
        print(
            f"rtdenoise serve: ready model={svc.engine.name} backend={svc.engine.backend} lag={svc.lag} "
            f"sub={a['sub']} ({'bind' if args.bind_sub else 'connect'}) pub={a['pub']} control={a['control']}",
            flush=True,
        )

    stats = serve(cfg, on_ready=ready)
    if args.json:
        _print_json(stats)
    else:
        print("rtdenoise serve: stopped\n" + format_status(stats), flush=True)
    return 0


def _add_replay(sub) -> None:
    from rtdenoise.stream.config import ServiceConfig

    p = sub.add_parser("replay", help="publish a recording over ZeroMQ at its frame rate, as if live")
    p.add_argument("input", help=".npy/.npz/.tif/.h5/.mat, time first: frames × wavelengths, or frames × H × W")
    p.add_argument("--pub", default=ServiceConfig.sub, help="endpoint (bound by default: `serve` connects to it)")
    p.add_argument("--rate", type=float, required=True, help="frames per second")
    p.add_argument("--chunk", type=int, default=1, help="frames per message")
    p.add_argument("--loop", action="store_true", help="start over at the end (seq counts on); stop with Ctrl-C or --duration")
    p.add_argument("--stream", default="replay", help="stream name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bind", dest="bind", action="store_true", default=True, help="bind --pub (default)")
    g.add_argument("--connect", dest="bind", action="store_false", help="connect to a service run with --bind-sub")
    p.add_argument("--start-seq", type=int, default=0)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--key", default=None, help="array name inside .npz/.h5/.mat")
    p.add_argument("--wait", type=float, default=0.5, help="seconds to let subscribers join before the first frame")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    _add_client_keys(p)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args) -> int:
    from rtdenoise.stream.replay import replay

    s = replay(
        args.input, pub=args.pub, stream=args.stream, rate_hz=args.rate, chunk=args.chunk, loop=args.loop,
        bind=args.bind, start_seq=args.start_seq, duration=args.duration, key=args.key, wait_s=args.wait,
        curve_keys=_client_keys(args),
    )
    if args.json:
        _print_json(s)
    else:
        print(
            f"replayed {s['frames']} frames of {args.input} as {s['stream']!r} on {s['address']} in {s['seconds']:.2f} s "
            f"({s['achieved_hz'] or 0:.1f} Hz, asked {s['rate_hz']:g}; {s['late']} late sends, max {s['max_late_ms']:.1f} ms)"
            + (" — interrupted" if s["interrupted"] else "")
        )
    return 0


def _add_status(sub) -> None:
    from rtdenoise.stream.config import ServiceConfig

    p = sub.add_parser("status", help="ask a running service for its per-stream counters and latencies")
    p.add_argument("--control", default=ServiceConfig.control, help="the service's control endpoint")
    p.add_argument("--json", action="store_true", help="the full reply as JSON")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the reply")
    _add_client_keys(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from rtdenoise.stream.control import control, format_status

    try:
        reply = control(args.control, "status", timeout=args.timeout, curve_keys=_client_keys(args))
    except TimeoutError as e:
        print(f"rtdenoise status: error: {e}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"rtdenoise status: error: the service answered: {reply.get('error')}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(reply)
    else:
        print(format_status(reply))
    return 0


def _add_proxy(sub) -> None:
    p = sub.add_parser("proxy", help="fan frames or outputs in and out between many rigs, services and consumers "
                                     "(ZeroMQ XSUB -> XPUB)")
    p.add_argument("--xsub", action="append", required=True, metavar="ADDR",
                   help="where messages come in: bound (publishers connect), or with --connect-xsub a PUB to "
                        "connect to (repeatable: one per service)")
    p.add_argument("--xpub", required=True, metavar="ADDR", help="where subscribers connect (bound)")
    p.add_argument("--connect-xsub", action="store_true", help="connect to each --xsub instead of binding")
    p.set_defaults(func=cmd_proxy)


def cmd_proxy(args) -> int:
    import signal
    import threading

    from rtdenoise.stream.proxy import Proxy

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Proxy(args.xsub, args.xpub, connect_xsub=args.connect_xsub) as px:
        a = px.addresses
        print(f"rtdenoise proxy: ready xsub={','.join(a['xsub'])} ({'connect' if args.connect_xsub else 'bind'}) "
              f"xpub={a['xpub']}", flush=True)
        while not stop.wait(0.2):
            pass
    return 0


def _add_view(sub) -> None:
    from rtdenoise.stream.config import ServiceConfig

    p = sub.add_parser("view", help="watch a live stream in napari: denoised beside raw, with latency and loss "
                                    "(pip install 'rtdenoise[viewer]')")
    p.add_argument("--sub", default=ServiceConfig.pub, help="the service's output endpoint")
    p.add_argument("--raw", default=None, metavar="ADDR", help="also show the raw frames: the acquisition's PUB endpoint")
    p.add_argument("--stream", default=None, help="one stream's name (default: the first to arrive, and every other)")
    p.add_argument("--history", type=int, default=300, help="spectra: rows of the scrolling spectrogram")
    p.add_argument("--frames", type=int, default=None, help="close after this many denoised frames (for scripts)")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="with --frames: save the canvas before closing")
    p.add_argument("--timeout", type=float, default=60.0, help="with --frames: give up after this many seconds")
    _add_client_keys(p)
    p.set_defaults(func=cmd_view)


def cmd_view(args) -> int:
    from rtdenoise.viewer import run_viewer

    r = run_viewer(args.sub, raw=args.raw, stream=args.stream, frames=args.frames, screenshot=args.screenshot,
                   history=args.history, timeout=args.timeout, curve_keys=_client_keys(args))
    print(f"rtdenoise view: {r['denoised']} denoised frames, {r['raw']} raw, lost {r['lost']}"
          + (f", latency p50 {r['latency_ms_p50']:.1f} ms" if r["latency_ms_p50"] is not None else ""), flush=True)
    if r["timed_out"]:
        print(f"rtdenoise view: error: {r['denoised']} of the {args.frames} denoised frames asked for"
              + (f" of stream {args.stream!r}" if args.stream else "") + f" came from {args.sub} within "
              f"{args.timeout:g} s: is the service running and publishing there? (`rtdenoise status`; "
              "--timeout to wait longer)", file=sys.stderr, flush=True)
        return 1
    return 0


# ----------------------------------------------------------------------------- keys (CURVE)


def _add_client_keys(p) -> None:
    p.add_argument("--client-key", default=None, metavar="FILE",
                   help="this client's secret key (NAME.key_secret) for a service run with --curve-keys")
    p.add_argument("--server-key", default=None, metavar="FILE",
                   help="the service's public key (server.key); give with --client-key")


def _client_keys(args):
    if (args.client_key is None) != (args.server_key is None):
        raise ValueError("--client-key and --server-key go together (this client's NAME.key_secret and the "
                         "service's server.key)")
    return None if args.client_key is None else (args.client_key, args.server_key)


def _add_keys(sub) -> None:
    p = sub.add_parser("keys", help="make a CURVE key pair for the service (default) or a client (--name)")
    p.add_argument("dir", help="directory to write NAME.key (public) and NAME.key_secret into (created if missing)")
    p.add_argument("--name", default="server",
                   help="'server' (default: the service's pair, plus an empty DIR/authorized/) or a client's name")
    p.add_argument("--authorize", default=None, metavar="SERVER_DIR",
                   help="also copy the new public key into SERVER_DIR/authorized/ (a client's key)")
    p.add_argument("--role", default="data", choices=["data", "publish", "subscribe", "control"],
                   help="with --authorize: what the key may do (data: publish and subscribe; control: "
                        "status/reset/stop)")
    p.add_argument("--streams", nargs="+", default=(), metavar="PREFIX",
                   help="with --authorize: the stream-name prefixes this key may publish to (default: any)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args) -> int:
    from rtdenoise.security import make_keys

    print("\n".join(make_keys(args.dir, args.name, authorize=args.authorize, role=args.role, streams=args.streams,
                                   force=args.force)))
    return 0


# ----------------------------------------------------------------------------- demo


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="simulated spectrometer (or two-photon rig) + live service + subscriber over "
                                    "loopback, with a report")
    p.add_argument("--modality", choices=["spectral", "imaging"], default="spectral",
                   help="spectral: a fiber-photometry spectrometer; imaging: a two-photon rig (uint16 frames)")
    p.add_argument("--seconds", type=float, default=None, help="how long to publish (default 30 spectral, 10 imaging)")
    p.add_argument("--rate", type=float, default=None,
                   help="frames/s published (default 50 spectral: a 5 Hz recording replayed 10x faster than real "
                        "time; 30 imaging)")
    p.add_argument("--size", type=int, default=512, help="imaging: frame height and width in pixels (default 512)")
    p.add_argument("--model", default=None, help="a .pt file or shipped model name (default: the shipped default)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: TensorRT on a GPU, else CUDA torch, else the fastest CPU backend measured for the model")
    p.add_argument("--photons", type=float, default=None,
                   help="counts at the emission peak (default 2000), imaging: at the brightest soma (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default="demo.png", help="write the figure here (default demo.png; '' for none)")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--spin", action="store_true", help="the service's latency mode (see serve --spin)")
    p.add_argument("--in-process", action="store_true",
                   help="run the service in this process (default: its own, `rtdenoise serve`, as beside real "
                        "acquisition software)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from rtdenoise.demo import main as demo_main

    return demo_main(args)


# ----------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure a running service from outside")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    from rtdenoise.stream.config import ServiceConfig

    q = what.add_parser("latency", help="open-loop paced frames in, latency from each frame's due time out")
    q.add_argument("--pub", default=ServiceConfig.sub, help="where to publish frames (the service's --sub)")
    q.add_argument("--sub", default=ServiceConfig.pub, help="where the service publishes (its --pub)")
    q.add_argument("--connect", action="store_true", help="connect --pub (for a service run with --bind-sub); default: bind it")
    q.add_argument("--rate", type=float, default=100.0, help="frames/s per stream")
    q.add_argument("--seconds", type=float, default=10.0)
    q.add_argument("--streams", type=int, default=1, help="concurrent streams (bench0.RUN, bench1.RUN, ...; RUN new each run)")
    q.add_argument("--input", default=None, help="a recording to publish (default: synthetic 152-bin spectra)")
    q.add_argument("--lag", type=int, default=None,
                   help="the service model's lag, so latency counts from the right frame (default: what its outputs say)")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service to answer a probe frame")
    q.add_argument("--json", action="store_true")
    _add_client_keys(q)
    q.set_defaults(func=cmd_bench_latency)


def cmd_bench_latency(args) -> int:
    from rtdenoise.bench import bench_latency

    summary = bench_latency(
        args.pub, args.sub, rate=args.rate, seconds=args.seconds, streams=args.streams, input=args.input,
        bind_pub=not args.connect, lag=args.lag, connect_timeout=args.timeout, curve_keys=_client_keys(args),
    )
    if args.json:
        _print_json(summary)
        return 0
    lat = summary["latency_ms"]
    print(f"{args.streams} stream(s) at {args.rate:g} frames/s for {args.seconds:g} s: in {summary['frames_in']}, "
          f"out {summary['frames_out']}, lost {summary['frames_lost']}")
    print("latency ms  " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")))
    print("stages p50  " + "  ".join(f"{k} {v:.3f}" for k, v in lat["stages_p50"].items()))
    return 0


# ----------------------------------------------------------------------------- main

# Verbs owned by other parts register here: (module, function adding the parser).
_VERBS = [_add_simulate, _add_train, _add_info, _add_set_sensor, _add_denoise, _add_demo, _add_bench, _add_export, _add_build_engine]
_VERBS += [_add_serve, _add_replay, _add_status, _add_proxy, _add_view, _add_keys]  # stream verbs, defined above main


def build_parser() -> argparse.ArgumentParser:
    from rtdenoise import __version__

    parser = argparse.ArgumentParser(prog="rtdenoise", description="Real-time causal denoising of fluorescence recordings.")
    parser.add_argument("--version", action="version", version=f"rtdenoise {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in _VERBS:
        add(sub)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised where the program is, so that what an interrupt cleans up (temporary
    files, half-written outputs) is cleaned up the same way."""


def _on_sigterm(pid: int, signum, frame):
    import signal

    if os.getpid() != pid:  # a forked worker (a DataLoader's) inherited this: die as it would have
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    import functools
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    # Verbs that stop gracefully on SIGTERM (serve, proxy) install their own handler over this one.
    here = threading.current_thread() is threading.main_thread()  # (only the main thread may set handlers)
    if here:
        previous = signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, os.getpid()))
    try:
        return _run(args)
    except _Terminated:
        print(f"rtdenoise {args.verb}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if here:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(args) -> int:
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # a user's line, not the source's
        print(f"rtdenoise {args.verb}: warning: {message}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, show
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `rtdenoise info ... | head`: the reader is gone; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (nor at the exit's flush)
        return 141
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, TimeoutError) as e:
        print(f"rtdenoise {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not type(e).__module__.startswith("zmq"):  # ZMQError: an endpoint in use, a bad address
            raise
        print(f"rtdenoise {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtdenoise {args.verb}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
