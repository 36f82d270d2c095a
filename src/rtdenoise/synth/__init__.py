"""Synthetic ground truth and instrument noise for training and evaluation."""

from __future__ import annotations

import numpy as np

from rtdenoise.synth.noise import DetectorConfig, DetectorNoise, RecordedNoise, noise_from_args
from rtdenoise.synth.spectral import SpectralConfig, SpectralInstance, sample_instance

__all__ = [
    "DetectorConfig",
    "DetectorNoise",
    "RecordedNoise",
    "SpectralConfig",
    "SpectralInstance",
    "noise_from_args",
    "sample_instance",
    "simulate",
]


def simulate(
    n_frames: int,
    *,
    seed: int = 0,
    photons: float | None = None,
    signal: SpectralConfig | None = None,
    noise: DetectorNoise | RecordedNoise | None = None,
) -> dict[str, np.ndarray]:
    """One synthetic recording with its ground truth, as a dict of arrays.

    Keys: ``noisy`` (T, W) float32 counts as the spectrometer reads them, ``clean`` (T, W)
    the noiseless signal, ``static`` (W,) the detector's offset (a perfect denoiser returns
    ``clean + static``), ``wavelengths``, the spectra ``emission``, ``signature``,
    ``eps_hbo2``, ``eps_hb``, the traces ``activity``, ``events``, ``hbo2``, ``hb``,
    ``event_onsets``, ``event_amplitudes``, and ``fs``.

    Examples
    --------
    >>> rec = simulate(100, seed=1, photons=2000)
    >>> rec["noisy"].shape
    (100, 152)
    """
    signal = signal or SpectralConfig()
    signal.validate()
    noise = noise or DetectorNoise()
    rng = np.random.default_rng(seed)
    inst = sample_instance(signal, n_frames, rng, photons=photons)
    noisy, static = noise.sample(inst.clean, rng, fs=signal.fs)
    return {
        "noisy": noisy.astype(np.float32),
        "clean": inst.clean.astype(np.float32),
        "static": static.astype(np.float32),
        "wavelengths": inst.wavelengths,
        "emission": inst.emission,
        "signature": inst.signature,
        "eps_hbo2": inst.eps_hbo2,
        "eps_hb": inst.eps_hb,
        "activity": inst.activity,
        "events": inst.events,
        "hbo2": inst.hbo2,
        "hb": inst.hb,
        "event_onsets": inst.event_onsets,
        "event_amplitudes": inst.event_amplitudes,
        "fs": np.float64(signal.fs),
    }
