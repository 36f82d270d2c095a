"""Export the network's streaming step to ONNX, and read such files back.

What is exported is the model family's ``step`` alone, the numpy front end stays on the host for
every backend. The graph is a pure function of the new features and the past rows:

================================  =========================  ==========================
tensor                            shape                      meaning
================================  =========================  ==========================
input  ``feat``                   (batch, chunk, F) float32  front-end features
input  ``<state>``                (batch, ...) float32       each state by its dotted
                                                             name, e.g. ``layers.0.previous``,
                                                             ``taps.previous``, ``delay.previous``
output ``out``                    (batch, chunk, C) float32  the network's output, ``lag`` behind
output ``<state>.out``            same as ``<state>``        the state after the chunk, e.g.
                                                             ``layers.0.previous.out``
================================  =========================  ==========================

``batch`` and ``chunk`` are dynamic axes. The states come in the order of
``CausalModel.state_names()``; a state with no rows at all (a layer with a kernel of 1
along time, the delay of a ``lag=0`` model) is left out of the graph, since zero-sized
inputs trouble TensorRT, and the graph makes its zeros itself. Which states are in the
graph and which are left out is recorded in the metadata (see below).

Weights are initializers named ``net.<key>`` after the checkpoint's ``state_dict`` keys
(never deduplicated), so :func:`checkpoint_from_onnx` rebuilds the full checkpoint.

Metadata (``ModelProto.metadata_props``, all strings):

- ``rtdenoise.format`` = ``rtdenoise-onnx``, ``rtdenoise.format_version`` = ``1``
- ``rtdenoise.checkpoint``: JSON of ``Checkpoint.info()`` (name, config, lag,
  receptive_field, wavelengths, fs, normalization, checkpoint format version, provenance,
  metrics): enough to rebuild the front end from the ``.onnx`` alone.
- ``rtdenoise.io``: JSON ``{"inputs": [...], "outputs": [...], "states": [...],
  "omitted_states": [...], "state_shapes": {name: shape without the batch axis},
  "n_features": F, "n_outputs": C, "opset": 17}``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ONNX_FORMAT = "rtdenoise-onnx"
ONNX_FORMAT_VERSION = 1
DEFAULT_OPSET = 17
STATE_OUT_SUFFIX = ".out"
WEIGHT_PREFIX = "net."


def state_output_name(state: str) -> str:
    """The graph output holding the new value of input state ``state``."""
    return state + STATE_OUT_SUFFIX


EXAMPLE_FRAME = (32, 48)  # an image model is traced on frames of this shape; H and W stay dynamic


def _io_spec(net, config) -> dict[str, Any]:
    """Names and shapes of the exported graph's inputs and outputs, from the model alone.

    For a model of any frame size (images) the spatial sizes of the states are None here:
    they follow from each stream's frame shape (``CausalModel.state_shapes``).
    """
    images = None in config.family.frame_shape(config)
    frame = EXAMPLE_FRAME if images else None
    shapes = net.state_shapes(1, frame)
    names = net.state_names()
    states = [n for n in names if 0 not in shapes[n]]  # rows kept; a state with none is left out
    omitted = [n for n in names if 0 in shapes[n]]
    fe = config.frontend(1, frame)
    tail = lambda shape: list(shape[1:3]) + [None] * (len(shape) - 3) if images else list(shape[1:])  # noqa: E731
    return {
        "inputs": ["feat", *states],
        "outputs": ["out", *[state_output_name(n) for n in states]],
        "states": states,
        "omitted_states": omitted,
        "state_shapes": {n: tail(shapes[n]) for n in names},
        "n_features": None if images else fe.feature_shape[0],  # None: the frame's own (H, W)
        "n_outputs": None if images else fe.output_shape[0],
    }


def _step_module(net, spec):
    """``forward(feat, *states) -> (out, *new_states)`` over the states kept in the graph."""
    from torch import nn

    class StepGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.states = list(spec["states"])
            self.omitted = list(spec["omitted_states"])

        def forward(self, feat, *states):
            # A state with no rows is never read (StreamingLayer.with_past): None stands in.
            state = dict(zip(self.states, states)) | dict.fromkeys(self.omitted)
            out, new = self.net.step(feat, state)
            return (out, *[new[n] for n in self.states])

    return StepGraph().eval()


def export_onnx(checkpoint, path: str | os.PathLike | None = None, *, opset: int = DEFAULT_OPSET):
    """Export the streaming step of ``checkpoint``'s network to ONNX.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model to export (its weights, config and metadata).
    path : str or path-like, optional
        Where to write the ``.onnx`` (written atomically, parent folders created). None
        returns the serialized model as ``bytes`` instead.
    opset : int
        ONNX opset; 17 is what ONNX Runtime and TensorRT 10 are tested with here.

    Returns
    -------
    Path or bytes
        ``path`` as a :class:`~pathlib.Path`, or the model's bytes when ``path`` is None.

    Examples
    --------
    >>> from rtdenoise.model.checkpoint import load
    >>> export_onnx(load("spectral-lag0"), "engines/spectral-lag0.onnx")  # doctest: +SKIP
    PosixPath('engines/spectral-lag0.onnx')
    """
    import onnx
    import torch

    from rtdenoise.model.checkpoint import Checkpoint

    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"export_onnx needs a Checkpoint (rtdenoise.model.checkpoint.load), got {type(checkpoint).__name__}")
    if not 13 <= int(opset) <= 21:
        raise ValueError(f"opset must be in 13..21, got {opset}")
    net = checkpoint.model().float().eval()
    spec = _io_spec(net, checkpoint.config)
    spec["opset"] = int(opset)
    wrapper = _step_module(net, spec)
    batch, chunk = 2, 3  # example sizes; both axes are exported as dynamic
    images = spec["n_features"] is None
    frame = EXAMPLE_FRAME if images else None
    shapes = net.state_shapes(batch, frame)
    feat = torch.zeros(batch, chunk, *(frame or (spec["n_features"],)))
    example = (feat, *[torch.zeros(shapes[n]) for n in spec["states"]])
    dynamic = {"feat": {0: "batch", 1: "chunk"}, "out": {0: "batch", 1: "chunk"}}
    if images:
        dynamic["feat"] |= {2: "height", 3: "width"}
        dynamic["out"] |= {2: "height", 3: "width"}
    for n in spec["states"]:
        axes = {0: "batch"}
        if images:  # the state's grid, a fraction of the (padded) frame's: (B, rows, C, H', W')
            axes |= {3: f"{n}.height", 4: f"{n}.width"}
        dynamic[n] = dynamic[state_output_name(n)] = axes
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy TorchScript exporter: the dynamo one traces the dict-of-states step
        # less reliably and needs onnxscript; this one is deprecated but complete for convs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            wrapper,
            example,
            buf,
            dynamo=False,
            opset_version=int(opset),
            input_names=spec["inputs"],
            output_names=spec["outputs"],
            dynamic_axes=dynamic,
            # Keeps every weight under its own name (no deduplication of equal tensors),
            # so the checkpoint can be rebuilt from the file; the inputs are dropped below.
            keep_initializers_as_inputs=True,
            do_constant_folding=False,  # runtimes fold at load time; folding would rename weights
        )
    model = onnx.load_from_string(buf.getvalue())
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    info = checkpoint.info()
    info.pop("path", None)
    onnx.helper.set_model_props(
        model,
        {
            "rtdenoise.format": ONNX_FORMAT,
            "rtdenoise.format_version": str(ONNX_FORMAT_VERSION),
            "rtdenoise.checkpoint": json.dumps(info, default=str),
            "rtdenoise.io": json.dumps(spec),
        },
    )
    model.doc_string = f"rtdenoise streaming step of model {checkpoint.name!r} (see rtdenoise.backends.export)"
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is None:
        return data
    from rtdenoise.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _load_model(source):
    import onnx

    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source)), "<bytes>"
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"ONNX file {str(p)!r} does not exist")
    try:
        return onnx.load(str(p)), str(p)
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise ValueError(f"{p} is not a readable ONNX file: {type(e).__name__}: {e}") from e


def _metadata(model, where: str) -> dict[str, Any]:
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("rtdenoise.format") != ONNX_FORMAT:
        raise ValueError(f"{where} is an ONNX file but not an rtdenoise export (no {ONNX_FORMAT!r} metadata); export it with `rtdenoise export`")
    if props.get("rtdenoise.format_version") != str(ONNX_FORMAT_VERSION):
        raise ValueError(
            f"{where} has rtdenoise ONNX format version {props.get('rtdenoise.format_version')}, "
            f"this rtdenoise reads {ONNX_FORMAT_VERSION}; re-export it with `rtdenoise export`"
        )
    return {
        "format": props["rtdenoise.format"],
        "format_version": int(props["rtdenoise.format_version"]),
        "checkpoint": json.loads(props["rtdenoise.checkpoint"]),
        "io": json.loads(props["rtdenoise.io"]),
    }


def read_onnx_metadata(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """The rtdenoise metadata of an exported ``.onnx`` (a path or the bytes).

    Returns ``{"format", "format_version", "checkpoint": Checkpoint.info() minus path,
    "io": {"inputs", "outputs", "states", "omitted_states", "state_shapes", ...}}``.
    Raises ``FileNotFoundError`` or ``ValueError`` (not ONNX, not an rtdenoise export).
    """
    model, where = _load_model(source)
    return _metadata(model, where)


def checkpoint_from_onnx(source: str | os.PathLike | bytes, *, weights: bool = True):
    """Rebuild the :class:`Checkpoint` an ``.onnx`` was exported from.

    ``weights=False`` skips the weights (``state_dict`` is empty): enough for the front end
    and for engines that run the graph itself (ONNX Runtime, TensorRT), not for
    ``Checkpoint.model()``.
    """
    import torch
    from onnx import numpy_helper

    from rtdenoise.model.checkpoint import checkpoint_from_info

    model, where = _load_model(source)
    meta = _metadata(model, where)
    path = None if where == "<bytes>" else where
    ckpt = checkpoint_from_info(meta["checkpoint"], {}, path)
    if not weights:
        return ckpt
    inits = {i.name: i for i in model.graph.initializer}
    expected = ckpt.config.build().state_dict()
    missing = [k for k in expected if WEIGHT_PREFIX + k not in inits]
    if missing:
        raise ValueError(f"{where} lacks weights {missing[:4]}{'...' if len(missing) > 4 else ''}; re-export it with `rtdenoise export`")
    ckpt.state_dict = {
        k: torch.from_numpy(np.array(numpy_helper.to_array(inits[WEIGHT_PREFIX + k]), copy=True)).to(v.dtype)
        for k, v in expected.items()
    }
    try:
        ckpt.model()
    except RuntimeError as e:
        raise ValueError(f"{where}: its weights do not fit its config: {e}") from e
    return ckpt
