"""Shared fixtures: small random models, so engine tests stay fast on a 2-core CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """Factory: ``tiny_checkpoint(arch="spectral", lag=0, **config) -> Checkpoint``.

    Random weights (seeded by the arguments), depth 3 and width 8 unless given. The last
    layer is rescaled so the network's correction is as large as its input: an untrained
    DnCNN is close to the identity, and the identity would hide most engine bugs. Results
    are cached per arguments for the whole session; treat them as read-only.
    """
    from rtdenoise.model.checkpoint import Checkpoint
    from rtdenoise.model.config import ModelConfig

    cache: dict = {}

    def make(arch: str = "spectral", lag: int = 0, *, name: str | None = None, seed: int = 0, **kw) -> Checkpoint:
        key = (arch, lag, name, seed, repr(sorted(kw.items())))
        if key in cache:
            return cache[key]
        kw.setdefault("depth", 3)
        kw.setdefault("width", 8)
        kw.setdefault("dilations", [])
        if arch == "subspace":
            kw.setdefault("rank", 4)
            kw.setdefault("taps", max(4, lag + 1))
        cfg = ModelConfig(arch=arch, lag=lag, **kw)
        torch.manual_seed(seed)
        net = cfg.build()
        with torch.no_grad():
            last = net.layers[-1].conv
            last.weight.normal_(0.0, 0.3 / np.sqrt(last.weight[0].numel()))
            last.bias.normal_(0.0, 0.1)
            for layer in net.layers[:-1]:
                layer.conv.bias.normal_(0.0, 0.1)  # distinct biases: nothing the exporter could merge
        wl = np.linspace(500.0, 700.0, cfg.n_bins).tolist()
        ckpt = Checkpoint(name or f"tiny-{arch}-lag{lag}", cfg, net.state_dict(), wavelengths=wl, fs=5.0)
        cache[key] = ckpt
        return ckpt

    return make


@pytest.fixture(scope="session")
def ck(tiny_checkpoint):
    """The tiny spectral lag-0 model most service tests run."""
    return tiny_checkpoint("spectral", 0)


@pytest.fixture(scope="session")
def noisy_frames():
    """Synthetic noisy recordings, cached: ``noisy_frames(n, seed=0) -> (n, 152) float32`` counts."""
    from rtdenoise.synth import simulate

    cache: dict = {}

    def make(n: int = 80, seed: int = 0) -> np.ndarray:
        if (n, seed) not in cache:
            cache[(n, seed)] = simulate(n, seed=seed, photons=2000)["noisy"]
        return cache[(n, seed)].copy()

    return make
