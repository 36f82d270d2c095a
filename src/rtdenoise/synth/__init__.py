"""Synthetic ground truth and instrument noise for training and evaluation."""

from __future__ import annotations

import numpy as np

from rtdenoise.synth.imaging import ImagingConfig, ImagingInstance, sample_scene
from rtdenoise.synth.noise import (
    DetectorConfig,
    DetectorNoise,
    MixedNoise,
    PMTConfig,
    PMTNoise,
    RecordedMovieNoise,
    RecordedNoise,
    SCMOSConfig,
    SCMOSNoise,
    movie_noise_from_args,
    noise_from_args,
)
from rtdenoise.synth.spectral import SpectralConfig, SpectralInstance, sample_instance

__all__ = [
    "DetectorConfig",
    "DetectorNoise",
    "ImagingConfig",
    "ImagingInstance",
    "MixedNoise",
    "PMTConfig",
    "PMTNoise",
    "RecordedMovieNoise",
    "RecordedNoise",
    "SCMOSConfig",
    "SCMOSNoise",
    "SpectralConfig",
    "SpectralInstance",
    "movie_noise_from_args",
    "noise_from_args",
    "pure_noise_movie",
    "sample_instance",
    "sample_scene",
    "simulate",
    "simulate_file",
    "simulate_movie",
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
    ``event_onsets``, ``event_amplitudes``, ``fs``, and ``states`` (the brain state per frame,
    an index into :data:`~rtdenoise.synth.spectral.STATES`) when the signal has them.

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
        **({"states": inst.states} if inst.states is not None else {}),
    }


def simulate_movie(
    n_frames: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] | None = None,
    photons: float | None = None,
    config: ImagingConfig | None = None,
    noise: PMTNoise | SCMOSNoise | RecordedMovieNoise | None = None,
) -> dict[str, np.ndarray]:
    """One synthetic microscope movie with its ground truth, as a dict of arrays.

    Parameters
    ----------
    n_frames : int
        Frames T.
    seed : int
        Everything is drawn from it: the same seed gives the same movie.
    shape : (int, int), optional
        Frame (H, W); ``config.shape`` (128 x 128 by default) when not given.
    photons : float, optional
        Resting counts at the brightest soma's footprint peak; drawn from
        ``config.photons`` (0.5–20, two-photon) when not given.
    config : ImagingConfig, optional
        The scene model; ``ImagingConfig()`` by default.
    noise : PMTNoise, SCMOSNoise or RecordedMovieNoise, optional
        The detector; ``PMTNoise()`` (two-photon) by default.

    Returns
    -------
    dict
        ``noisy`` (T, H, W) float32 counts as the detector reads them, ``clean`` (T, H, W)
        float32 the noiseless movie, ``static`` (H, W) the detector's dark level (a perfect
        denoiser returns ``clean + static``), ``footprints`` (N, H, W), ``traces`` (N, T)
        counts at each footprint's peak, ``dff`` (N, T), ``spikes`` (N, T), ``background``
        (H, W) and ``background_trace`` (T,) (the neuropil), ``shifts`` (T, 2) px, ``fs`` Hz,
        ``photons``. See :class:`ImagingInstance`.

    Examples
    --------
    >>> mov = simulate_movie(20, seed=1, shape=(64, 64), photons=5)
    >>> mov["noisy"].shape, mov["footprints"].shape[1:]
    ((20, 64, 64), (64, 64))
    """
    config = config or ImagingConfig()
    config.validate()
    noise = noise or PMTNoise()
    rng = np.random.default_rng(seed)
    inst = sample_scene(config, n_frames, rng, photons=photons, shape=shape)
    noisy, static = noise.sample(inst.clean, rng, fs=inst.fs)
    return {
        "noisy": noisy.astype(np.float32, copy=False),
        "clean": inst.clean,
        "static": np.asarray(static, dtype=np.float32),
        "footprints": inst.footprints,
        "traces": inst.traces,
        "dff": inst.dff,
        "spikes": inst.spikes,
        "background": inst.background,
        "background_trace": inst.background_trace,
        "shifts": inst.shifts,
        "fs": np.float64(inst.fs),
        "photons": np.float64(inst.params["photons"]),
    }


def pure_noise_movie(
    n_frames: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = (128, 128),
    photons: float | None = None,
    fs: float = 30.0,
    noise: PMTNoise | SCMOSNoise | RecordedMovieNoise | None = None,
) -> dict[str, np.ndarray]:
    """A movie of steady, uniform light and nothing else: ``clean`` is ``photons`` everywhere.

    What a denoiser is checked on to show it invents nothing (no somata, no flicker). Same
    keys as :func:`simulate_movie`, with no neurons (``footprints`` is ``(0, H, W)``).

    Examples
    --------
    >>> mov = pure_noise_movie(10, shape=(32, 32), photons=4.0)
    >>> float(mov["clean"].min()), float(mov["clean"].max()), mov["footprints"].shape
    (4.0, 4.0, (0, 32, 32))
    """
    config = ImagingConfig.steady_light(shape=tuple(shape), fs=(fs, fs))
    return simulate_movie(n_frames, seed=seed, photons=photons, config=config, noise=noise)


def simulate_file(out, n_frames: int, *, modality: str = "spectral", seed: int = 0, photons: float | None = None,
                  fs: float | None = None, shape=None, read_noise: float | None = None, dark=None, light=None,
                  detector: str | None = None) -> str:
    """``rtdenoise simulate``: write a synthetic recording and its ground truth to ``out``.

    Spectra (:func:`simulate`; ``dark``/``light`` recordings or the detector model with
    ``read_noise``) or a movie (:func:`simulate_movie` of frames ``shape``, its noise from
    ``dark`` and/or ``light`` stacks (:class:`RecordedMovieNoise`), else the ``detector``
    model, ``"pmt"`` (two-photon, the default) or ``"scmos"``; its footprints, mostly zeros,
    are stored as ``footprint_neuron``, ``footprint_pixel``, ``footprint_weight``
    triplets). The noisy frames go under ``noisy``, the configuration (the signal model, the
    noise used) as JSON bytes under ``config_json``. Returns a one-line summary.
    """
    import json

    from rtdenoise.io import save_frames

    if n_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {n_frames}")
    if modality == "imaging":
        if read_noise is not None:
            raise ValueError("--read-noise is for spectra; movies take --detector, or --dark/--light recordings")
        config = ImagingConfig() if fs is None else ImagingConfig(fs=(fs, fs))
        config = config.replace(shape=tuple(int(s) for s in shape) if shape else config.shape)
        noise = movie_noise_from_args(dark, light, detector=detector)
        if isinstance(noise, RecordedMovieNoise):
            noise.check_fits(n_frames, config.shape, what="the {h} × {w} frames asked (--shape)",
                             span="the {n} asked (--frames)",
                             fix_shape="simulate smaller frames (--shape)", fix_frames="simulate fewer (--frames)")
        rec = simulate_movie(n_frames, seed=seed, photons=photons, config=config, noise=noise)
        h, w = config.shape
        foot = rec.pop("footprints").reshape(-1, h * w)  # (N, H·W); N may be 0: a scene without neurons
        n, p = np.nonzero(foot)
        rec.update(footprint_neuron=n.astype(np.int32), footprint_pixel=p.astype(np.int32),
                   footprint_weight=foot[n, p].astype(np.float32))
        meta = {"modality": modality, "signal": config.to_dict(), "noise": noise.describe(), "seed": seed,
                "photons": photons}
        summary = (f"{n_frames} frames of {h} × {w} px at {float(rec['fs']):.1f} Hz, {len(foot)} neurons, "
                   f"{float(rec['photons']):.2f} photons at the brightest somata ({noise.kind} noise)")
    elif modality == "spectral":
        if shape:
            raise ValueError("--shape is for --modality imaging; a spectrum's width comes from the signal model")
        if detector is not None:
            raise ValueError(f"--detector {detector} is for movies (--modality imaging); spectra use the "
                             "spectrometer's detector model (--read-noise) or --dark/--light recordings")
        signal = SpectralConfig() if fs is None else SpectralConfig(fs=fs)
        noise = noise_from_args(dark, light, n_bins=signal.n_bins, read_noise=read_noise)
        rec = simulate(n_frames, seed=seed, photons=photons, signal=signal, noise=noise)
        meta = {"signal": signal.to_dict(), "noise": noise.describe(), "seed": seed, "photons": photons}
        summary = f"{n_frames} frames × {signal.n_bins} bins at {signal.fs:g} Hz ({noise.kind} noise)"
    else:
        raise ValueError(f"modality must be 'spectral' or 'imaging', got {modality!r}")
    # JSON as UTF-8 bytes: every container format stores a uint8 array, none needs pickle.
    rec["config_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    save_frames(out, rec.pop("noisy"), key="noisy", extra=rec)
    return f"wrote {out}: {summary}"
