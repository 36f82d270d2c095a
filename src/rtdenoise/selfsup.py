"""Self-supervised fine-tuning on the user's own noisy movie, causal and blind-spot.

When no synthetic scene looks like the user's tissue, the model learns from the movie
itself (Noise2Void's idea, made causal): in each training window a random few pixels of
every frame are hidden from the network, replaced by a random neighbour's value *before*
the front end sees them, so neither the network nor the running baseline can copy their
noise; the loss is the network's output at those pixels against their true noisy values
(in the front end's noise units). The past frames stay fully visible: their noise is
independent of the current frame's, so using them is exactly what a causal denoiser may
do, and no future frame is needed (``lag`` frames of lookahead for a lookahead model).

Before any step the model is set to the movie's units (``calibrate``): a camera or a
digitizer writes counts that are not photons, and a network trained on photons then
misjudges the noise (twice too large a noise for 4 counts per photon), which the blind-spot
loss cannot correct, since it never shows the network its own pixel. The movie's photon
transfer (:func:`photon_transfer`: each pixel's temporal variance against its mean) gives
the counts per photon and the dark level, stored in the model's config (``gain``,
``offset``) for its front end; the blind-spot validation loss before any step is that of
the calibrated model.

The blind-spot steps run for ``minutes`` (default 0: calibration alone). Measured
(``benchmarks/results/selfsup*.md``): they helped a weakly trained model (+0.95 dB in 5
minutes) and cost the shipped ``imaging-lag0`` 0.7 and 2.6 dB after its calibration, while
their blind-spot validation loss fell. A pixel replaced by a neighbour looks, to the network,
like a pixel without its own noise, so the steps teach it to trust the current pixel more,
and at inference that pixel's noise comes through; the shipped model trusted it as its
supervised training set. A loss that bounds this (Noise2Same's invariance term) is the next
step; a Monte-Carlo SURE loss, tried, diverged (its divergence term was gamed).

The movie is read block by block (:mod:`rtdenoise.blocks`); the last ``holdout`` of its
frames are kept out of training and give the validation loss.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtdenoise.model.checkpoint import Checkpoint, load
from rtdenoise.model.config import ModelConfig


@dataclass
class SelfSupConfig:
    """How to fine-tune; stored in the checkpoint's provenance."""

    minutes: float = 0.0  # wall-clock budget of blind-spot steps after the calibration (see the CLI help: they can cost quality)
    steps: int = 100_000  # optimizer steps at most
    batch: int = 8  # windows per step
    window: int = 32  # frames per window (the front end warms up over its first frames)
    patch: tuple[int, int] = (64, 64)  # pixels per window
    mask_fraction: float = 0.02  # pixels hidden per frame (Noise2Void uses ~0.2-2 %)
    lr: float = 2e-4  # AdamW, constant: a fine-tune, not a schedule from scratch
    holdout: float = 0.1  # share of the movie's last frames kept out of training, for validation (a window at least)
    val_every: int = 50
    seed: int = 0
    threads: int | None = None  # torch threads (None: all cores)
    calibrate: bool = True  # set the model's gain and offset from the movie's photon transfer first

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mask(x: np.ndarray, rng: np.random.Generator, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``fraction`` of the pixels of every frame of ``x`` (B, T, H, W): each takes the
    value of a random pixel of its 5 x 5 neighbourhood. Returns (masked copy, boolean mask)."""
    b, t, h, w = x.shape
    mask = rng.random(x.shape) < fraction
    idx = np.nonzero(mask)
    dy = rng.integers(-2, 3, len(idx[0]))
    dx = rng.integers(-2, 3, len(idx[0]))
    same = (dy == 0) & (dx == 0)
    dx[same] = 1  # never the pixel itself
    # Off the frame, the offset is mirrored (clipping would hand a border pixel its own value).
    src_y, src_x = idx[2] + dy, idx[3] + dx
    src_y = np.where((src_y < 0) | (src_y >= h), idx[2] - dy, src_y)
    src_x = np.where((src_x < 0) | (src_x >= w), idx[3] - dx, src_x)
    masked = x.copy()
    masked[idx] = x[idx[0], idx[1], src_y, src_x]
    return masked, mask


def _windows(movie: np.ndarray, rng, n: int, window: int, patch: tuple[int, int], stop: int) -> np.ndarray:
    """``n`` random windows (n, window, ph, pw) float32 from frames ``[0, stop)`` of ``movie``."""
    ph, pw = min(patch[0], movie.shape[1]), min(patch[1], movie.shape[2])
    out = np.empty((n, window, ph, pw), dtype=np.float32)
    for i in range(n):
        t0 = rng.integers(0, stop - window + 1)
        y0, x0 = rng.integers(0, movie.shape[1] - ph + 1), rng.integers(0, movie.shape[2] - pw + 1)
        out[i] = movie[t0 : t0 + window, y0 : y0 + ph, x0 : x0 + pw]
    return out


def photon_transfer(movie: np.ndarray, *, bins: int = 20) -> tuple[float, float] | None:
    """Counts per photon and dark level of a movie (T, H, W) of counts, from its photon
    transfer; None when the movie shows none.

    Shot noise makes a pixel's variance grow with its mean, ``var = gain · (mean − offset)``
    (plus a read noise). Each pixel's variance is taken from its successive differences, so
    slow signal and drift hardly count; the pixels are put in ``bins`` bins by mean, and the
    line is fit to each bin's median mean and variance (hot pixels and active somata do not
    pull it). The read noise's variance ends up in ``offset`` (``offset`` = dark level − read
    variance / gain): what the front end needs, whose variance floor then stands for what is
    left of it. None when no line is found: a slope that is not positive or not known to
    10 % (uniform light, whose pixels' means hardly differ), or too few pixels. The movie is
    read a block of frames at a time (float64 sums per pixel only). Returns ``(gain, offset)``.
    """
    if np.ndim(movie) != 3 or len(movie) < 3:
        raise ValueError(f"photon transfer needs a movie (T, H, W) of at least 3 frames, got shape {np.shape(movie)}")
    t = len(movie)
    total, sq = np.zeros(movie.shape[1:]), np.zeros(movie.shape[1:])
    last = None
    for i in range(0, t, 64):
        x = np.asarray(movie[i : i + 64], dtype=np.float64)
        total += x.sum(axis=0)
        d = np.diff(x, axis=0) if last is None else np.diff(np.concatenate([last[None], x]), axis=0)
        sq += (d * d).sum(axis=0)
        last = x[-1]
    mean, var = (total / t).ravel(), (0.5 * sq / (t - 1)).ravel()
    bins = min(bins, mean.size)
    if bins < 4:
        return None
    parts = np.array_split(np.argsort(mean), bins)
    m = np.array([np.median(mean[i]) for i in parts])
    v = np.array([np.median(var[i]) for i in parts])
    if not (np.isfinite(m).all() and np.isfinite(v).all()) or np.ptp(m) <= 0:
        return None
    (gain, icpt), cov = np.polyfit(m, v, 1, cov=True)
    if not (np.isfinite(gain) and gain > 0 and np.sqrt(cov[0, 0]) < 0.1 * gain):
        return None
    return float(gain), float(-icpt / gain)


def masked_loss(net, cfg, noisy: np.ndarray, rng: np.random.Generator, fraction: float) -> torch.Tensor:
    """The blind-spot loss of a batch of windows (B, T, H, W) of counts."""
    masked, mask = _mask(noisy, rng, fraction)
    fe = cfg.frontend(noisy.shape[0], noisy.shape[2:])
    norm = fe.normalize(masked)
    target = torch.from_numpy(fe.target(noisy, norm))  # the true noisy values, in the same units
    out = net(torch.from_numpy(norm.features))  # (B, T, H', W'), row t for frame t - lag
    lag, (h, w) = cfg.lag, noisy.shape[2:]
    m = torch.from_numpy(mask)
    if lag:
        out, target, m = out[:, lag:], target[:, :-lag], m[:, :-lag]
    err = (out[..., :h, :w] - target[..., :h, :w]) ** 2
    return err[m].mean()


def finetune(out: str | os.PathLike, movie: str | os.PathLike, *, model=None, config: SelfSupConfig | None = None,
             key: str | None = None, progress: bool = True, command: str | None = None) -> Checkpoint:
    """Fine-tune an imaging ``model`` (a checkpoint, path or shipped name) on ``movie`` (T, H, W).

    Writes the fine-tuned checkpoint to ``out`` (atomically, at every validation) and
    returns it. The movie must hold more frames than a window plus the held-out part.
    """
    from tqdm import tqdm

    from rtdenoise.blocks import open_frames

    cfg = config or SelfSupConfig()
    base = model if isinstance(model, Checkpoint) else load(model)
    if base.modality != "imaging":
        raise ValueError(f"self-supervised fine-tuning is for imaging models; {base.name!r} is {base.modality}")
    with open_frames(movie, key=key) as reader:
        if len(reader.shape) != 3:
            raise ValueError(f"{movie}: expected a movie (T, H, W), got shape {reader.shape}")
        need = cfg.window + base.lag
        stop = len(reader) - max(int(len(reader) * cfg.holdout), need)  # the held-out part holds a window at least
        if stop < need:
            raise ValueError(
                f"{movie} has {len(reader)} frames; self-supervised training with windows of {cfg.window} frames "
                f"needs at least {2 * need} (a window to train on, one held out): record longer or pass a shorter --window"
            )
        data = np.concatenate(list(reader.blocks(256))).astype(np.float32)  # the movie, in memory for random windows
    if not np.isfinite(data).all():
        raise ValueError(f"{movie} contains NaN/inf values; interpolate or drop those frames first")
    units = base.config
    if cfg.calibrate:
        found = photon_transfer(data[:stop])
        if found is None:
            warnings.warn(f"{movie}: no photon transfer found (too uniform a movie?); the model keeps its gain "
                          f"{units.gain:g} and offset {units.offset:g}", stacklevel=2)
        else:
            units = ModelConfig.from_dict(base.config.to_dict() | {"gain": found[0], "offset": found[1]})
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = base.model().train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    val_rng = np.random.default_rng([cfg.seed, 1])
    held = data[stop - base.lag :]
    val_sets = [_windows(held, val_rng, 4, cfg.window, cfg.patch, len(held)) for _ in range(4)]

    def validate() -> float:  # the same windows and masks every time
        net.eval()
        with torch.no_grad():
            losses = [masked_loss(net, units, x, np.random.default_rng([cfg.seed, 2, i]), cfg.mask_fraction).item()
                      for i, x in enumerate(val_sets)]
        net.train()
        return float(np.mean(losses))

    def save(val_loss: float, steps: int, wall: float) -> Checkpoint:
        prov = dict(base.provenance)
        prov["self_supervised"] = {"from": base.name, "movie": str(movie), "frames": len(data), "config": cfg.to_dict(),
                                   "steps": steps, "wall_time_s": wall, "val_loss_before": before, "val_loss": val_loss,
                                   "gain": units.gain, "offset": units.offset,
                                   "command": command or " ".join(sys.argv), "torch": str(torch.__version__),
                                   "machine": f"{platform.machine()} {os.cpu_count()} cores",
                                   "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        ck = Checkpoint(Path(out).stem, units, net.state_dict(), wavelengths=[], fs=base.fs, provenance=prov)
        ck.save(out)
        return ck

    before = validate()
    t0 = time.perf_counter()
    deadline = t0 + cfg.minutes * 60
    step, val_loss, running = 0, before, None
    with tqdm(total=cfg.steps, disable=not progress, unit="step", dynamic_ncols=True) as bar:
        while step < cfg.steps and time.perf_counter() < deadline:
            loss = masked_loss(net, units, _windows(data, rng, cfg.batch, cfg.window, cfg.patch, stop), rng,
                               cfg.mask_fraction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{running:.4f}", val=f"{val_loss:.4f}", before=f"{before:.4f}")
            if step % cfg.val_every == 0:
                val_loss = validate()
                save(val_loss, step, time.perf_counter() - t0)
    val_loss = validate()
    return save(val_loss, step, time.perf_counter() - t0)
