"""Self-supervised fine-tuning on the user's own noisy movie, causal, by photon splitting.

When no synthetic scene looks like the user's tissue, the model learns from the movie
itself. Two steps:

1. **Units** (``calibrate``): a camera or a digitizer writes counts that are not photons,
   and a network trained on photons then misjudges the noise (twice too large a noise for
   4 counts per photon). The movie's photon transfer (:func:`photon_transfer`: each pixel's
   temporal variance against its mean) gives the counts per photon and the dark level,
   stored in the model's config (``gain``, ``offset``) for its front end.
2. **Photon splitting** (:func:`split_loss`, for ``minutes``): in each training window every
   pixel's photons are dealt at random, each to the network's input with probability
   ``keep``, else to the target. A Poisson count split so gives two independent Poisson
   counts of the same scene, at ``keep`` and ``1 - keep`` of its light (binomial thinning,
   Noise2Noise from one movie). The network sees the first as a movie, every pixel of every
   frame and the full past, as at inference, and is scored on every pixel against the
   second, scaled to the first's light. That target's noise is independent of the input's,
   so the network cannot learn to copy it, and the best it can do is the scene. Beyond
   Poisson light the halves' covariance is ``keep (1 - keep) (variance - mean)`` of the
   rounded counts, small where step 1's units make each pixel's variance its mean (a
   camera's read noise is folded into them).

The network then learns this movie's scenes at ``keep`` of its light, and is run on all of
it (``benchmarks/results/selfsup*.md``). The halves are exactly independent only for counts
that are photons. A PMT's pulses are not whole photons, and at a fraction of a photon per
pixel (typical two-photon frames) the rounded counts' halves share a few per cent of their
noise: enough, at such a raw SNR, for a network that passes a little of it to win the loss;
on such a movie (0.5 photons per pixel) the steps cost 6 dB. So a movie of fewer than
``min_photons`` per pixel per frame on average gets no steps (a warning says so), only its
units. Scoring each frame's output against the next frame instead (noise independent from
frame to frame, the scene one frame on) cost 1.3 dB on a dim two-photon movie of large
somata (commit d2d29fd, ``results/selfsup_pmt_big_next.md``) and was removed.

An earlier blind-spot loss (Noise2Void's: hide a few pixels, replace them by a neighbour,
score them) cost the shipped model 0.7 to 2.6 dB: a replaced pixel looks like one without
its own noise, so it taught the network to trust the current pixel, whose noise then came
through at inference. Splitting shows the network its own pixel in training as at
inference, with the noise it will have there (less of it, by ``keep``).

The movie is read block by block (:mod:`rtdenoise.blocks`); the last ``holdout`` of its
frames are kept out of training and give the validation loss (the same splits every time).
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
from rtdenoise.train import cosine_decay


@dataclass
class SelfSupConfig:
    """How to fine-tune; stored in the checkpoint's provenance."""

    minutes: float = 5.0  # wall-clock budget of photon-splitting steps after the calibration
    steps: int = 100_000  # optimizer steps at most
    batch: int = 8  # windows per step
    window: int = 32  # frames per window (the front end warms up over its first frames)
    patch: tuple[int, int] = (64, 64)  # pixels per window
    keep: float = 0.8  # the share of each pixel's photons the network sees (the rest is its target)
    min_photons: float = 2.0  # no steps on a movie dimmer than this, photons per pixel per frame on average (see above)
    lr: float = 4e-4  # AdamW's peak; it decays to 2 % of it along a cosine over the budget (a calm last step to keep)
    holdout: float = 0.1  # share of the movie's last frames kept out of training, for validation (a window at least)
    val_every: int = 50
    seed: int = 0
    threads: int | None = None  # torch threads (None: all cores)
    calibrate: bool = True  # set the model's gain and offset from the movie's photon transfer first

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def split_photons(noisy: np.ndarray, cfg, rng: np.random.Generator, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Deal each pixel's photons of ``noisy`` (counts; photons by the config's ``gain`` and
    ``offset``, rounded, none below zero) at random: each to the first movie with probability
    ``keep``, else to the second. Returns both in counts, the second scaled to the first's
    light (``keep / (1 - keep)``): for Poisson light, the same scene with independent noise.
    """
    photons = np.rint(np.clip((noisy - cfg.offset) / cfg.gain, 0.0, None)).astype(np.int64)
    seen = rng.binomial(photons, keep)
    rest = (photons - seen) * (keep / (1.0 - keep))
    return (seen * cfg.gain + cfg.offset).astype(np.float32), (rest * cfg.gain + cfg.offset).astype(np.float32)


def split_loss(net, cfg, noisy: np.ndarray, rng: np.random.Generator, keep: float) -> torch.Tensor:
    """The photon-splitting loss of a batch of windows (B, T, H, W) of counts: the network
    sees the first movie of :func:`split_photons` (every pixel of every frame, as at
    inference) and is scored on every pixel against the second, in the front end's units.
    The second's noise is independent of the first's, so the best the network can do is the
    first's clean scene.
    """
    inp, other = split_photons(noisy, cfg, rng, keep)
    fe = cfg.frontend(noisy.shape[0], noisy.shape[2:])
    norm = fe.normalize(inp)
    target = torch.from_numpy(fe.target(other, norm))
    out = net(torch.from_numpy(norm.features))  # (B, T, H', W'), row t for frame t - lag
    lag, (h, w) = cfg.lag, noisy.shape[2:]
    if lag:
        out, target = out[:, lag:], target[:, :-lag]
    return ((out[..., :h, :w] - target[..., :h, :w]) ** 2).mean()


def finetune(out: str | os.PathLike, movie: str | os.PathLike, *, model=None, config: SelfSupConfig | None = None,
             key: str | None = None, progress: bool = True, command: str | None = None) -> Checkpoint:
    """Fine-tune an imaging ``model`` (a checkpoint, path or shipped name) on ``movie`` (T, H, W).

    Writes the fine-tuned checkpoint to ``out`` (atomically, at every validation) and
    returns it. The movie must hold more frames than a window plus the held-out part.
    """
    from tqdm import tqdm

    from rtdenoise.blocks import open_frames

    cfg = config or SelfSupConfig()
    if not 0.0 < cfg.keep < 1.0:
        raise ValueError(f"keep is the share of the photons the network sees, strictly between 0 and 1; got {cfg.keep}")
    base = model if isinstance(model, Checkpoint) else load(model)
    if base.modality != "imaging":
        raise ValueError(f"self-supervised fine-tuning is for imaging models; {base.name!r} is {base.modality}")
    with open_frames(movie, key=key) as reader:
        if len(reader.shape) != 3:
            raise ValueError(f"{movie}: expected a movie (T, H, W), got shape {reader.shape}")
        base.config.family.check_frame_shape(base.config, reader.shape[1:])  # the model could not denoise it
        windows = tuple(min(p, n) for p, n in zip(cfg.patch, reader.shape[1:]))
        if windows != tuple(reader.shape[1:]):  # a crop: it must be a frame the model takes too
            try:
                base.config.family.check_frame_shape(base.config, windows)
            except ValueError as e:
                raise ValueError(f"training windows of {windows[0]} × {windows[1]} px (--patch): {e}") from None
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
    light = sum(float(np.clip((data[i : min(i + 64, stop)] - units.offset) / units.gain, 0.0, None).sum())
                for i in range(0, stop, 64)) / data[:stop].size  # a block at a time: no copy of the movie
    minutes, skipped = cfg.minutes, None
    if minutes > 0 and light < cfg.min_photons:
        skipped = f"too dim for photon splitting: {light:.2g} photons per pixel per frame, below {cfg.min_photons:g}"
        warnings.warn(f"{movie}: {light:.2g} photons per pixel per frame on average, below {cfg.min_photons:g}: too dim for "
                      f"photon splitting (its halves' noise is no longer independent, and the steps would cost quality); "
                      f"the model is set to the movie's units only", stacklevel=2)
        minutes = 0.0
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = base.model().train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    val_rng = np.random.default_rng([cfg.seed, 1])
    held = data[stop - base.lag :]
    val_sets = [_windows(held, val_rng, 4, cfg.window, cfg.patch, len(held)) for _ in range(4)]

    def validate() -> float:  # the same windows and splits every time
        net.eval()
        with torch.no_grad():
            losses = [split_loss(net, units, x, np.random.default_rng([cfg.seed, 2, i]), cfg.keep).item()
                      for i, x in enumerate(val_sets)]
        net.train()
        return float(np.mean(losses))

    def save(val_loss: float, steps: int, wall: float) -> Checkpoint:
        prov = dict(base.provenance)
        prov["self_supervised"] = {"from": base.name, "movie": str(movie), "frames": len(data), "config": cfg.to_dict(),
                                   "steps": steps, "wall_time_s": wall, "val_loss_before": before, "val_loss": val_loss,
                                   "gain": units.gain, "offset": units.offset, "photons": light, "skipped": skipped,
                                   "command": command or " ".join(sys.argv), "torch": str(torch.__version__),
                                   "machine": f"{platform.machine()} {os.cpu_count()} cores",
                                   "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        ck = Checkpoint(Path(out).stem, units, net.state_dict(), wavelengths=[], fs=base.fs, provenance=prov)
        ck.save(out)
        return ck

    before = validate()
    t0 = time.perf_counter()
    deadline = t0 + minutes * 60
    step, val_loss, running = 0, before, None
    # The budget is wall clock, so the bar counts its seconds (the steps go in the postfix).
    with tqdm(total=round(minutes * 60), disable=not progress or minutes <= 0, unit="s", dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]") as bar:
        while step < cfg.steps and time.perf_counter() < deadline:
            done = max((time.perf_counter() - t0) / max(deadline - t0, 1e-9), step / cfg.steps)
            for g in opt.param_groups:
                g["lr"] = cosine_decay(cfg.lr, done)
            loss = split_loss(net, units, _windows(data, rng, cfg.batch, cfg.window, cfg.patch, stop), rng, cfg.keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(min(time.perf_counter() - t0, bar.total) - bar.n)
            if step % 10 == 0:
                bar.set_postfix(step=step, loss=f"{running:.4f}", val=f"{val_loss:.4f}", before=f"{before:.4f}")
            if step % cfg.val_every == 0:
                val_loss = validate()
                save(val_loss, step, time.perf_counter() - t0)
    val_loss = validate()
    return save(val_loss, step, time.perf_counter() - t0)
