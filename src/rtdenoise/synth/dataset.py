"""Training instances generated on the fly: synthetic signal + instrument noise, forever.

No fixed dataset: every window is new, so the training set is effectively infinite and the
model cannot overfit it (the DeepDenoise recipe).
"""

from __future__ import annotations

import numpy as np
import torch

from rtdenoise.synth.noise import DetectorNoise, RecordedNoise
from rtdenoise.synth.spectral import SpectralConfig, SpectralInstance, sample_instance


class SpectralDataset(torch.utils.data.IterableDataset):
    """Endless ``(noisy, target)`` windows of shape ``(window, n_bins)``, float32 counts.

    ``target = clean + static``: what the detector reads without its random noise.

    Parameters
    ----------
    signal : SpectralConfig
        The signal model and its randomization ranges.
    noise : DetectorNoise or RecordedNoise
        Where the noise comes from; the detector model by default.
    window : int
        Frames per instance.
    seed : int
        Instances are reproducible from it: the same seed gives the same stream of windows
        (per DataLoader worker, which each get ``seed + worker_id``).

    Examples
    --------
    >>> ds = SpectralDataset(SpectralConfig(), window=64, seed=0)
    >>> noisy, target = next(iter(ds))
    >>> noisy.shape
    (64, 152)
    """

    def __init__(
        self,
        signal: SpectralConfig | None = None,
        noise: DetectorNoise | RecordedNoise | None = None,
        *,
        window: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.signal = signal or SpectralConfig()
        self.signal.validate()
        self.noise = noise or DetectorNoise()
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        for rec in [self.noise, *getattr(self.noise, "sources", [])]:  # a MixedNoise's recordings too
            if not isinstance(rec, RecordedNoise):
                continue
            if rec.dark.shape[1] != self.signal.n_bins:
                raise ValueError(
                    f"noise recordings have {rec.dark.shape[1]} bins, the signal model {self.signal.n_bins}"
                )
            shortest = min(rec.dark.shape[0], rec.light.shape[0])
            if shortest < window:
                raise ValueError(
                    f"noise recordings have {shortest} frames, fewer than one window of {window}; "
                    "record longer or pass a shorter window"
                )
        self.window = window
        self.seed = seed

    def instance(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, SpectralInstance]:
        inst = sample_instance(self.signal, self.window, rng)
        noisy, static = self.noise.sample(inst.clean, rng, fs=self.signal.fs)
        return noisy.astype(np.float32), (inst.clean + static[None, :]).astype(np.float32), inst

    def batch(self, rng: np.random.Generator, size: int, *, sensor: bool = False) -> tuple[np.ndarray, ...]:
        """``size`` instances stacked: two ``(size, window, n_bins)`` float32 arrays, and with
        ``sensor`` a third ``(size, n_bins)``: each instance's sensor emission spectrum (its
        emission less the tissue's, ``E·S``: how its frames change as the sensor brightens)."""
        made = [self.instance(rng) for _ in range(size)]
        out = np.stack([m[0] for m in made]), np.stack([m[1] for m in made])
        if sensor:
            out += (np.stack([m[2].emission * m[2].signature for m in made]).astype(np.float32),)
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + (info.id if info is not None else 0))
        while True:
            noisy, target, _ = self.instance(rng)
            yield noisy, target


class ImagingDataset:
    """Endless ``(noisy, target)`` movie patches ``(window, H, W)``, float32 counts.

    Each instance is a new synthetic scene (:func:`rtdenoise.synth.imaging.sample_scene`)
    with new noise; ``target = clean + static``, what the detector reads without its random
    noise. The interface is :class:`SpectralDataset`'s (``instance``, ``batch``).

    Parameters
    ----------
    signal : ImagingConfig
        The scene model and its randomization ranges; ``shape`` is overridden by ``patch``.
    noise : PMTNoise, SCMOSNoise or RecordedMovieNoise
        Where the noise comes from; a two-photon PMT by default.
    window : int
        Frames per instance.
    patch : (int, int)
        Pixels per instance: the model is convolutional, so it learns on patches and runs
        on any frame size.

    Examples
    --------
    >>> ds = ImagingDataset(window=8, patch=(32, 32))
    >>> noisy, target = ds.batch(np.random.default_rng(0), 2)
    >>> noisy.shape
    (2, 8, 32, 32)
    """

    def __init__(self, signal=None, noise=None, *, window: int = 32, patch: tuple[int, int] = (64, 64), seed: int = 0):
        from rtdenoise.synth.imaging import ImagingConfig
        from rtdenoise.synth.noise import PMTNoise, RecordedMovieNoise

        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        if len(patch) != 2 or min(patch) < 4:
            raise ValueError(f"patch must be (H, W) of at least 4 × 4 pixels, got {patch}")
        self.signal = (signal or ImagingConfig()).replace(shape=tuple(int(p) for p in patch))
        self.signal.validate()
        self.noise = noise or PMTNoise()
        self.window, self.patch, self.seed = window, tuple(patch), seed
        if isinstance(self.noise, RecordedMovieNoise):  # before any instance: say which flag to change
            self.noise.check_fits(window, self.patch, what="the training patch {h} × {w}",
                                  fix_shape="train on smaller patches (--patch)", fix_frames="train on shorter windows (--window)")

    def instance(self, rng: np.random.Generator):
        from rtdenoise.synth.imaging import sample_scene

        inst = sample_scene(self.signal, self.window, rng)
        noisy, static = self.noise.sample(inst.clean, rng, fs=inst.fs)
        return noisy.astype(np.float32), (inst.clean + static[None]).astype(np.float32), inst

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` instances stacked: two ``(size, window, H, W)`` float32 arrays."""
        pairs = [self.instance(rng)[:2] for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def clean_batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` clean movies ``(size, window, H, W)`` float32 and each one's detector draw
        ``(size, 5)`` (:meth:`PMTNoise.draw`): the instances before their noise, for
        :meth:`PMTNoise.sample_torch` to finish where the network trains (PMT noise only)."""
        from rtdenoise.synth.imaging import sample_scene
        from rtdenoise.synth.noise import PMTNoise

        if not isinstance(self.noise, PMTNoise):
            raise TypeError(f"clean batches are for the PMT detector model, not {type(self.noise).__name__}")
        clean = np.stack([sample_scene(self.signal, self.window, rng).clean for _ in range(size)]).astype(np.float32)
        return clean, np.stack([self.noise.draw(rng) for _ in range(size)])
