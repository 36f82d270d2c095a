"""TensorRT engine (TensorRT 10 API): the exported streaming step as a plan on an NVIDIA GPU.

A plan is built from the ``.onnx`` of :func:`rtdenoise.backends.export.export_onnx` with one
optimization profile over batch (streams) and chunk (frames) sizes, min 1 and opt 1 (the
live, one-frame case), and is only valid on the GPU model and TensorRT version it was built
with. Beside every ``NAME.plan`` lies ``NAME.plan.json``: TensorRT version, GPU name and
compute capability, the profile, and the model metadata (the ONNX file's), so a plan is
loaded without its checkpoint and refused, with the fix, on another GPU or TensorRT.

The states stay on the GPU between steps (torch CUDA tensors as device buffers, one set per
:class:`StreamState`, at fixed addresses); TensorRT writes the new rows to scratch buffers
that are copied back on the same CUDA stream. Only the features go up and the output comes
down per step. Tensors are bound by name, as in the ONNX graph: ``feat``, ``<state>``,
``out``, ``<state>.out``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtdenoise.atomic import atomic_path
from rtdenoise.backends.base import Engine, PerChunk
from rtdenoise.model.checkpoint import Checkpoint, checkpoint_from_info

PLAN_FORMAT = "rtdenoise-tensorrt-plan"
PLAN_FORMAT_VERSION = 1
INSTALL_HINT = "pip install rtdenoise[tensorrt] (TensorRT 10+; it needs an NVIDIA GPU with CUDA)"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}; import failed with: {e}") from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ImportError(f"the tensorrt backend needs TensorRT 10 or newer, found {trt.__version__}: {INSTALL_HINT}")
    return trt


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """Where the metadata of ``plan_path`` lives: ``<plan>.json``."""
    return Path(str(plan_path) + ".json")


class _CudaDevice:
    """Device buffers and a CUDA stream, through torch (a core dependency)."""

    def __init__(self, index: int = 0):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "the tensorrt backend needs an NVIDIA GPU and a CUDA build of torch (torch.cuda.is_available() is False); "
                "use backend='onnxruntime' or 'torch' on this machine"
            )
        self.torch = torch
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)  # TensorRT uses the current device
        self.stream = torch.cuda.Stream(device=self.device)
        self.handle = self.stream.cuda_stream

    def zeros(self, shape) -> Any:
        return self.torch.zeros(tuple(shape), dtype=self.torch.float32, device=self.device)

    def host(self, shape) -> Any:
        return self.torch.empty(tuple(shape), dtype=self.torch.float32, pin_memory=True)

    def on_stream(self):
        return self.torch.cuda.stream(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def info(self) -> dict:
        p = self.torch.cuda.get_device_properties(self.device)
        return {"name": p.name, "compute_capability": [int(p.major), int(p.minor)], "cuda": self.torch.version.cuda}


# Tests swap this for a host-memory stand-in to exercise the binding logic without a GPU.
_device_for = _CudaDevice


def _onnx_source(onnx_or_checkpoint) -> tuple[bytes, dict]:
    """(ONNX bytes, rtdenoise metadata) from a Checkpoint, an ``.onnx`` path or ONNX bytes."""
    from rtdenoise.backends.export import export_onnx, read_onnx_metadata

    if isinstance(onnx_or_checkpoint, Checkpoint):
        data = export_onnx(onnx_or_checkpoint)
    elif isinstance(onnx_or_checkpoint, (bytes, bytearray)):
        data = bytes(onnx_or_checkpoint)
    else:
        p = Path(onnx_or_checkpoint)
        if p.suffix != ".onnx":
            raise ValueError(f"build_plan needs a Checkpoint or an .onnx file, got {str(p)!r}")
        if not p.exists():
            raise FileNotFoundError(f"ONNX file {str(p)!r} does not exist; write it with `rtdenoise export`")
        data = p.read_bytes()
    return data, read_onnx_metadata(data)


def _require_fixed_frames(io: dict) -> None:
    if io["n_features"] is None:  # an image model: frames of any H x W
        raise ValueError("TensorRT plans are built for models with a fixed frame shape (spectra) so far; "
                         "run an imaging model with backend='onnxruntime' or 'torch'")


def _build_serialized(trt, onnx_bytes: bytes, meta: dict, *, fp16: bool, max_batch: int, max_chunk: int, workspace_mb: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in later TensorRT 10 releases
            raise ValueError("--fp16 asked for, but this GPU has no fast FP16; build without it")
        config.set_flag(trt.BuilderFlag.FP16)  # I/O stays float32; layers may run in half
    io = meta["io"]
    _require_fixed_frames(io)
    profile = builder.create_optimization_profile()
    n_feat = int(io["n_features"])
    profile.set_shape("feat", (1, 1, n_feat), (1, 1, n_feat), (max_batch, max_chunk, n_feat))
    for name in io["states"]:
        tail = tuple(io["state_shapes"][name])
        profile.set_shape(name, (1, *tail), (1, *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    got = [network.get_input(i).name for i in range(network.num_inputs)]
    if got != io["inputs"]:
        raise ValueError(f"the ONNX graph's inputs {got} differ from its metadata {io['inputs']}; re-export it")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the plan; rerun with a TensorRT logger at VERBOSE for the reason")
    return bytes(plan)


def build_plan(
    onnx_or_checkpoint,
    plan_path: str | os.PathLike,
    *,
    fp16: bool = False,
    max_batch: int = 16,
    max_chunk: int = 64,
    workspace_mb: int = 1024,
    device: int = 0,
) -> Path:
    """Build a TensorRT plan for this GPU, with its ``<plan>.json`` sidecar.

    Parameters
    ----------
    onnx_or_checkpoint : Checkpoint, str/path to ``.onnx``, or ONNX bytes
        The model (a Checkpoint is exported to ONNX in memory first).
    plan_path : str or path-like
        Where to write the plan (``engines/NAME.plan``); the sidecar is ``NAME.plan.json``.
    fp16 : bool
        Let TensorRT run layers in half precision (inputs and outputs stay float32).
    max_batch, max_chunk : int
        The profile's largest streams per call and frames per chunk (both from 1, opt 1).
        Longer chunks are split by the engine; more streams need a new plan.
    workspace_mb : int
        Builder workspace, MiB.

    Returns
    -------
    Path
        ``plan_path``.

    Raises
    ------
    ImportError
        TensorRT is not installed (``pip install rtdenoise[tensorrt]``, on a machine with an
        NVIDIA GPU).
    """
    trt = _import_trt()  # first: no export work on a machine that cannot build
    if int(max_batch) < 1 or int(max_chunk) < 1:
        raise ValueError(f"max_batch and max_chunk must be >= 1, got {max_batch} and {max_chunk}")
    dev = _device_for(device)
    onnx_bytes, meta = _onnx_source(onnx_or_checkpoint)
    plan = _build_serialized(
        trt, onnx_bytes, meta, fp16=fp16, max_batch=int(max_batch), max_chunk=int(max_chunk), workspace_mb=workspace_mb
    )
    info = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "tensorrt": str(trt.__version__),
        "gpu": dev.info(),
        "fp16": bool(fp16),
        "max_batch": int(max_batch),
        "max_chunk": int(max_chunk),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "built_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": meta,
    }
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(plan)
    with atomic_path(sidecar_path(plan_path)) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return plan_path


def read_plan_info(plan_path: str | os.PathLike) -> dict:
    """The sidecar of ``plan_path`` (``<plan>.json``), checked for format."""
    p = Path(plan_path)
    if not p.exists():
        raise FileNotFoundError(f"TensorRT plan {str(p)!r} does not exist; build it with `rtdenoise build-engine`")
    side = sidecar_path(p)
    if not side.exists():
        raise ValueError(f"{p} has no sidecar {side.name}: cannot tell which model, GPU and TensorRT it is for; rebuild it with `rtdenoise build-engine`")
    try:
        info = json.loads(side.read_text())
    except ValueError as e:
        raise ValueError(f"{side} is not valid JSON ({e}); rebuild the plan with `rtdenoise build-engine`") from e
    if info.get("format") != PLAN_FORMAT or info.get("format_version") != PLAN_FORMAT_VERSION:
        raise ValueError(
            f"{side} is not an rtdenoise plan sidecar of format version {PLAN_FORMAT_VERSION}; rebuild with `rtdenoise build-engine`"
        )
    return info


def checkpoint_from_plan(plan_path: str | os.PathLike) -> Checkpoint:
    """The model a plan was built from (config and metadata, no weights), from its sidecar."""
    info = read_plan_info(plan_path)
    return checkpoint_from_info(info["model"]["checkpoint"], {}, str(plan_path))


def check_plan_compatible(info: dict, *, tensorrt_version: str, gpu: dict, where: str = "the plan") -> None:
    """Raise ValueError, with the fix, when a plan was built for another TensorRT or GPU."""
    problems = []
    if info.get("tensorrt") != tensorrt_version:
        problems.append(f"TensorRT {info.get('tensorrt')} (this machine has {tensorrt_version})")
    built = info.get("gpu", {})
    if list(built.get("compute_capability", [])) != list(gpu["compute_capability"]) or built.get("name") != gpu["name"]:
        cc = ".".join(map(str, built.get("compute_capability", []))) or "?"
        here = ".".join(map(str, gpu["compute_capability"]))
        problems.append(f"GPU {built.get('name')} (sm {cc}; this machine has {gpu['name']}, sm {here})")
    if problems:
        raise ValueError(
            f"{where} was built for {' and '.join(problems)}; TensorRT plans only run where they were built: "
            "rebuild it here with `rtdenoise build-engine`"
        )


class _TrtState:
    """Device buffers of one set of streams: the states (fixed addresses) and scratch."""

    def __init__(self, dev, io: dict, batch: int):
        shapes = io["state_shapes"]
        self.batch = batch
        self.inputs = {n: dev.zeros((batch, *shapes[n])) for n in io["states"]}
        self.outputs = {n: dev.zeros((batch, *shapes[n])) for n in io["states"]}
        self.chunks = PerChunk()  # n -> (feat host pinned, feat device, out device, out host pinned)

    def buffers(self, dev, n: int, n_feat: int, n_out: int):
        b = self.batch
        return self.chunks.get_or_make(
            n, lambda: (dev.host((b, n, n_feat)), dev.zeros((b, n, n_feat)), dev.zeros((b, n, n_out)), dev.host((b, n, n_out)))
        )


class TrtEngine(Engine):
    """Steps a TensorRT plan of the network; states stay on the GPU.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model (its config builds the front end; weights are only needed to build a plan).
    plan_path : str or path-like, optional
        A plan from ``rtdenoise build-engine`` (with its ``.json`` sidecar). Without it, a
        plan is built in memory from ``onnx_path`` or the checkpoint (takes a while).
    onnx_path : str or path-like, optional
        Build from this ``.onnx`` instead of exporting the checkpoint.
    fp16, max_batch, max_chunk, workspace_mb : as in :func:`build_plan`, when building.
    device : int
        CUDA device index.

    Raises
    ------
    ImportError
        No TensorRT (``pip install rtdenoise[tensorrt]``).
    RuntimeError
        No CUDA GPU.
    ValueError
        A plan built for another GPU, TensorRT version or model.
    """

    backend = "tensorrt"
    gpu = True

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        plan_path: str | os.PathLike | None = None,
        onnx_path: str | os.PathLike | None = None,
        fp16: bool = False,
        max_batch: int = 16,
        max_chunk: int = 64,
        workspace_mb: int = 1024,
        device: int = 0,
    ):
        super().__init__(checkpoint)
        trt = _import_trt()
        self.trt = trt
        self.dev = _device_for(device)
        gpu = self.dev.info()
        if plan_path is not None:
            info = read_plan_info(plan_path)
            check_plan_compatible(info, tensorrt_version=str(trt.__version__), gpu=gpu, where=str(plan_path))
            plan = Path(plan_path).read_bytes()
            if hashlib.sha256(plan).hexdigest() != info.get("plan_sha256"):
                raise ValueError(f"{plan_path} does not match its sidecar's checksum (rebuilt or truncated?); rebuild it")
            meta = info["model"]
            max_batch, max_chunk, fp16 = int(info["max_batch"]), int(info["max_chunk"]), bool(info["fp16"])
        else:
            onnx_bytes, meta = _onnx_source(checkpoint if onnx_path is None else onnx_path)
            if int(max_batch) < 1 or int(max_chunk) < 1:
                raise ValueError(f"max_batch and max_chunk must be >= 1, got {max_batch} and {max_chunk}")
            plan = _build_serialized(
                trt, onnx_bytes, meta, fp16=fp16, max_batch=int(max_batch), max_chunk=int(max_chunk), workspace_mb=workspace_mb
            )
        self._check_exported(meta, plan_path or onnx_path)
        self.plan_path = None if plan_path is None else str(plan_path)
        self.fp16, self.max_batch, self.max_chunk = fp16, int(max_batch), int(max_chunk)
        self.io = meta["io"]
        self.states = list(self.io["states"])
        _require_fixed_frames(self.io)
        self.n_features, self.n_outputs = int(self.io["n_features"]), int(self.io["n_outputs"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ValueError(f"TensorRT could not deserialize {plan_path or 'the plan'}; rebuild it with `rtdenoise build-engine`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(self.io["inputs"]) or sorted(outputs) != sorted(self.io["outputs"]):
            raise ValueError(f"the plan's tensors {inputs} -> {outputs} differ from its metadata {self.io['inputs']} -> {self.io['outputs']}")
        for n in names:
            if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise ValueError(f"plan tensor {n!r} is {self.engine.get_tensor_dtype(n)}, expected float32; rebuild the plan")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")

    # -- backend hooks -----------------------------------------------------------------
    def _new_net_state(self, batch: int, frame: tuple[int, ...]) -> _TrtState:
        if batch > self.max_batch:
            raise ValueError(
                f"this plan takes at most {self.max_batch} streams per call, asked for {batch}; "
                "rebuild it with a larger --max-batch"
            )
        return _TrtState(self.dev, self.io, batch)

    def _reset_net(self, net_state: _TrtState, index: int | None) -> None:
        with self.dev.on_stream():
            super()._reset_net(net_state.inputs, index)
        self.dev.synchronize()

    def _view_net(self, net_state: _TrtState, index: int) -> _TrtState:
        view = object.__new__(_TrtState)  # the rows of one stream: its own scratch and chunk buffers
        view.batch, view.chunks = 1, PerChunk()
        view.inputs = {k: v[index : index + 1] for k, v in net_state.inputs.items()}
        view.outputs = {k: v[index : index + 1] for k, v in net_state.outputs.items()}
        return view

    def _net_arrays(self, net_state: _TrtState) -> list:
        return list(net_state.inputs.values())

    def _net_step(self, feat: np.ndarray, net_state: _TrtState) -> np.ndarray:
        n = feat.shape[1]
        if n <= self.max_chunk:
            return self._run(feat, net_state)
        # Longer than the profile allows: streaming equals offline, so split the chunk.
        pieces = [self._run(feat[:, s : s + self.max_chunk], net_state) for s in range(0, n, self.max_chunk)]
        return np.concatenate(pieces, axis=1)

    def _run(self, feat: np.ndarray, st: _TrtState) -> np.ndarray:
        bsz, n, _ = feat.shape
        ctx = self.context
        x_host, x_dev, out_dev, out_host = st.buffers(self.dev, n, self.n_features, self.n_outputs)
        np.copyto(x_host.numpy(), feat)  # pinned: the upload below is truly asynchronous
        with self.dev.on_stream():
            x_dev.copy_(x_host, non_blocking=True)
            self._bind(ctx, "feat", (bsz, n, self.n_features), x_dev)
            for k in self.states:
                self._bind(ctx, k, tuple(st.inputs[k].shape), st.inputs[k])
                self._address(ctx, k + ".out", st.outputs[k])
            self._address(ctx, "out", out_dev)
            if not ctx.execute_async_v3(self.dev.handle):
                raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")
            for k in self.states:  # the new rows back into the fixed state buffers, same stream
                st.inputs[k].copy_(st.outputs[k], non_blocking=True)
            out_host.copy_(out_dev, non_blocking=True)
        self.dev.synchronize()
        return out_host.numpy().copy()

    @classmethod
    def _bind(cls, ctx, name: str, shape: tuple, buf) -> None:
        if not ctx.set_input_shape(name, shape):
            raise RuntimeError(f"TensorRT refused shape {shape} for input {name!r}")
        cls._address(ctx, name, buf)

    @staticmethod
    def _address(ctx, name: str, buf) -> None:
        if not ctx.set_tensor_address(name, buf.data_ptr()):  # else it would run on the previous address
            raise RuntimeError(f"TensorRT refused the address of {name!r} ({buf.data_ptr():#x}; it wants 256-byte alignment)")

    def slot_limit(self, frame: tuple[int, ...]) -> int:
        """TensorRT wants every tensor address 256-byte aligned: a slot (one stream's rows of a
        group state) is only when each state's rows are a multiple of 256 bytes; else one stream
        per state. At most the plan's ``max_batch`` either way."""
        rows = [4 * int(np.prod(self.io["state_shapes"][n])) for n in self.states]
        return self.max_batch if all(r % 256 == 0 for r in rows) else 1
