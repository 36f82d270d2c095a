"""Checkpoints that describe themselves: weights + config + normalization + provenance.

A checkpoint is a plain dict of tensors, strings, numbers and lists, saved with
``torch.save`` and loaded with ``torch.load(weights_only=True)``: no pickled objects, so a
model file cannot execute code. Any engine can rebuild the model from the file alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from rtdenoise.model.config import ModelConfig
from rtdenoise.model.streaming import CausalModel

FORMAT = "rtdenoise-checkpoint"
FORMAT_VERSION = 1
DEFAULT_MODELS = {"spectral": "spectral-lag0", "imaging": "imaging-lag0"}  # the shipped default per modality
DEFAULT_MODEL = DEFAULT_MODELS["spectral"]


@dataclass
class Checkpoint:
    """A trained model and everything needed to use it."""

    name: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    modality: str | None = None  # "spectral" or "imaging": the family's (None takes it from the config)
    wavelengths: list[float] = field(default_factory=list)  # nm, one per bin
    fs: float = 5.0  # frame rate it was trained for, Hz
    provenance: dict = field(default_factory=dict)  # signal/noise config, seed, steps, losses, wall time
    metrics: dict = field(default_factory=dict)  # quality measured after training
    path: str | None = None

    def __post_init__(self):
        family = self.config.family
        if self.modality is None:
            self.modality = family.modality
        elif self.modality != family.modality:
            raise ValueError(f"model {self.name!r} is an {self.config.arch!r} model, modality {family.modality!r}, "
                             f"not {self.modality!r}")

    @property
    def frame_shape(self) -> tuple[int | None, ...]:
        """The frames the model takes; None where any size goes (an image's H and W)."""
        return self.config.family.frame_shape(self.config)

    @property
    def lag(self) -> int:
        return self.config.lag

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def normalization(self) -> dict:
        return {"kind": "running-baseline/sqrt", "horizon": self.config.horizon, "floor": self.config.floor,
                "counts_per_photon": self.config.gain, "dark_level": self.config.offset,
                **({"follows_motion": True} if self.config.register else {}),
                **({"output_baseline": {"slow_horizon": self.config.slow_horizon, "smooth_bins": self.config.smooth_bins}}
                   if self.config.slow_horizon else {})}

    def following_motion(self, on: bool) -> Checkpoint:
        """This model with its front end following the frame's rigid motion (``on``) or not:
        the same weights, ``config.register`` set (:func:`rtdenoise.model.frontend.follow_motion`).
        A model trained without it can use it (a wandering field of view then leaves no edges
        for the network to mistake for noise); one with it can save its cost on a still field
        (4 to 5 ms a 512 × 512 frame on 2 CPU cores, ``register_cost.md``)."""
        if self.modality != "imaging":
            if on:
                raise ValueError(f"model {self.name!r} is a {self.modality} model: only imaging models follow motion")
            return self
        if bool(on) == self.config.register:
            return self
        return replace(self, config=replace(self.config, register=bool(on)))

    def for_sensor(self, spectrum) -> Checkpoint:
        """This model with a sensor's emission spectrum (one value per bin, any scale; the
        sensor's own light, without the tissue's) as its known sensor direction: the same
        weights, ``config.sensor`` set. For a model trained to take one (``rtdenoise train
        --hemoglobin --sensor``, trained on each instance's own sensor); a lab gives its
        sensor's once (``rtdenoise set-sensor``) and every engine then uses it."""
        if self.config.sensor is None:
            raise ValueError(f"model {self.name!r} does not take a sensor spectrum: it was trained without --sensor")
        values = [float(v) for v in np.ravel(np.asarray(spectrum, dtype=np.float64))]
        return replace(self, config=replace(self.config, sensor=values))

    def model(self) -> CausalModel:
        """The network of this checkpoint's family with these weights, in eval mode."""
        net = self.config.build()
        net.load_state_dict(self.state_dict)
        return net.eval()

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "modality": self.modality,
            "frame_shape": list(self.frame_shape),
            "wavelengths": [float(x) for x in self.wavelengths],
            "fs": float(self.fs),
            "lag": self.lag,
            "receptive_field": self.receptive_field,
            "config": self.config.to_dict(),
            "normalization": self.normalization(),
            "provenance": self.provenance,
            "metrics": self.metrics,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
        }

    def info(self) -> dict:
        """Everything but the weights, for ``rtdenoise info``."""
        d = self.to_dict()
        d["parameters"] = int(sum(v.numel() for v in self.state_dict.values()))
        d["frame_sizes"] = self.config.family.frame_sizes(self.config)
        fs_range = self.provenance.get("signal", {}).get("fs")
        if isinstance(fs_range, (list, tuple)) and len(fs_range) == 2:  # movies: trained on a range of frame rates
            d["fs_range"] = [float(fs_range[0]), float(fs_range[1])]
        d["path"] = self.path
        del d["state_dict"]
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash never leaves a truncated checkpoint under ``path``."""
        from rtdenoise.atomic import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
            # Refuse to write what could not be read back safely (a non-plain type slipped in).
            torch.load(tmp, map_location="cpu", weights_only=True)


def shipped_models_dir() -> Path:
    """Where the models shipped with rtdenoise live (the repo's ``models/``)."""
    return Path(str(resources.files("rtdenoise._shipped")))


def default_model(frame_ndim: int = 1) -> str:
    """The shipped default for frames of ``frame_ndim`` axes: spectra (1) or images (2)."""
    if frame_ndim not in (1, 2):
        raise ValueError(f"frames of {frame_ndim} axes: rtdenoise takes spectra (W,) or images (H, W)")
    return DEFAULT_MODELS["imaging" if frame_ndim == 2 else "spectral"]


def resolve(model: str | os.PathLike | None) -> Path:
    """A path for ``model``: None = the shipped default (spectral), a shipped name, or a file path."""
    if model is None:
        model = DEFAULT_MODEL
    p = Path(model)
    if p.suffix == ".pt" or p.exists() or os.sep in str(model):
        if not p.exists():
            raise FileNotFoundError(f"model file {str(p)!r} does not exist")
        return p
    shipped = shipped_models_dir() / f"{model}.pt"
    if not shipped.exists():
        names = sorted(q.stem for q in shipped_models_dir().glob("*.pt"))
        raise ValueError(f"no shipped model named {model!r}; shipped: {names}, or give a path to a .pt file")
    return shipped


def checkpoint_from_info(info: dict, state_dict: dict, path: str | None) -> Checkpoint:
    """A :class:`Checkpoint` from its :meth:`Checkpoint.info` (or saved dict) and weights.

    Exported files (ONNX, TensorRT plans) carry the info as metadata, so they rebuild the
    checkpoint they came from with this; ``state_dict`` may be empty where only the front
    end and the config are needed.
    """
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} comes from checkpoint format version {info.get('format_version')}, "
            f"this rtdenoise reads {FORMAT_VERSION}; upgrade rtdenoise or re-export the model"
        )
    missing = [k for k in ("name", "config", "modality", "wavelengths", "fs") if k not in info]
    if missing:
        raise ValueError(f"{path}: its model metadata lacks {missing}; re-export the model with this rtdenoise")
    return Checkpoint(
        name=info["name"],
        config=ModelConfig.from_dict(info["config"]),
        state_dict=state_dict,
        modality=info["modality"],
        wavelengths=list(info["wavelengths"]),
        fs=float(info["fs"]),
        provenance=info.get("provenance", {}),
        metrics=info.get("metrics", {}),
        path=path,
    )


def load(model: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint by path or shipped name (None = the default).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is
    not a valid rtdenoise checkpoint (corrupt, truncated, wrong format version).
    """
    path = resolve(model)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt file
        raise ValueError(f"{path} is not a readable rtdenoise checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path} is not an rtdenoise checkpoint (no format marker {FORMAT!r})")
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {d.get('format_version')}, this rtdenoise reads {FORMAT_VERSION}; "
            "upgrade rtdenoise or re-export the model"
        )
    try:
        ckpt = checkpoint_from_info(d, d["state_dict"], str(path))
        ckpt.model()  # the weights must fit the config
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path} is a damaged rtdenoise checkpoint: {type(e).__name__}: {e}") from e
    return ckpt


def _short(value):
    """A config value for a line of text: a long list (a sensor's spectrum) as its length."""
    return f"<{len(value)} values>" if isinstance(value, list) and len(value) > 16 else value


def format_info(info: dict) -> str:
    """:meth:`Checkpoint.info` as the lines ``rtdenoise info`` prints."""
    pv = info["provenance"]
    wl = info["wavelengths"]
    lines = [
        f"model          {info['name']}  ({info['path']})",
        f"format         {info['format']} v{info['format_version']}",
        f"modality       {info['modality']}, frames "
        + (" × ".join("any" if d is None else str(d) for d in info["frame_shape"])),
        f"wavelengths    {wl[0]:.1f}–{wl[-1]:.1f} nm in {len(wl)} bins" if wl else "wavelengths    -",
        f"frame rate     {info['fs']:g} Hz"
        + (f" (trained on {info['fs_range'][0]:g}–{info['fs_range'][1]:g} Hz)" if info.get("fs_range") else ""),
        *([f"frame sizes    {' × '.join(map(str, info['frame_sizes']['min']))} pixels and larger"]
          if info.get("frame_sizes", {}).get("max", 0) is None else []),
        f"lag            {info['lag']} frames ({info['lag'] / info['fs']:.2f} s)",
        f"receptive field {info['receptive_field']} frames ({info['receptive_field'] / info['fs']:.1f} s)",
        "architecture   " + ", ".join(f"{k}={_short(v)}" for k, v in info["config"].items()),
        "normalization  " + ", ".join(f"{k}={v}" for k, v in info["normalization"].items()),
        f"parameters     {info['parameters']:,}",
    ]
    if pv:
        lines += [
            f"trained        {pv.get('steps')} steps, {pv.get('instances')} instances, "
            f"{pv.get('wall_time_s', 0) / 60:.1f} min on {pv.get('machine')}, seed {pv.get('train', {}).get('seed')}",
            f"val loss       {pv.get('final_val_loss'):.4f} (identity {pv.get('val_loss_raw'):.4f})",
            f"noise          {pv.get('noise', {}).get('kind')}",
            *([f"fine-tuned     from {pv['init']['name']} (val loss {pv['init']['val_loss']:.4f} before, on this noise)"]
              if "init" in pv else []),
            f"command        {pv.get('command')}",
        ]
    for k, v in info.get("metrics", {}).items():
        lines.append(f"metric         {k}: {v}")
    return "\n".join(lines)
