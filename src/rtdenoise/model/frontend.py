"""Causal front end: per-stream running statistics that put frames in the network's units.

1. **Baseline and scale** (every architecture). Per wavelength,

       b_t = running mean of x up to and including t
       s_t = sqrt(max(b_t, 0) + floor)        (a Poisson count's noise std is about √b)
       xn_t = (x_t − b_t) / s_t               (noise units: one model for 100 or 50,000 counts)

   The running mean is cumulative for the first ``horizon`` frames, then an exponential
   moving average with that time constant.

2. **Spectral subspace** (``rank > 0``). Photometry spectra are nearly low-rank across
   wavelengths. The front end keeps a running second-moment matrix ``C`` of ``xn``
   (same cumulative-then-EMA schedule over ``cov_horizon`` frames) and tracks its top-``rank``
   eigenvectors ``U`` by one step of subspace iteration per frame (``U ← orth(C U)``), which
   keeps ``U`` continuous in time: no eigen-solver spikes, no sign flips. The network then
   sees the coefficients ``z = Uᵀ xn`` and the log eigenvalues (how much signal each
   direction carries), and returns denoised coefficients ``ẑ``; the frame is ``U ẑ``.
   This is the classical causal PCA projection, kept up to date, with a learned temporal
   denoiser on top.

Everything uses only the past, and all of it is state updated in place per stream, so a
stream can be processed in chunks of any size with identical results. It runs on the host
in numpy for every backend.
"""

from __future__ import annotations

import numpy as np


def _initial_basis(n_bins: int, rank: int) -> np.ndarray:
    """The first ``rank`` DCT-II vectors: smooth spectra, a sensible prior before any data."""
    k = np.arange(rank)[None, :]
    i = np.arange(n_bins)[:, None]
    u = np.cos(np.pi * (i + 0.5) * k / n_bins)
    return u / np.linalg.norm(u, axis=0, keepdims=True)  # (W, r)


class FrontEnd:
    """Per-stream normalization (and subspace) state for ``batch`` streams.

    Parameters
    ----------
    n_bins : int
        Frame width W.
    horizon : int
        Frames of the running baseline once warm.
    floor : float
        Added to the variance (counts²) so dark bins do not blow up the normalized input.
    rank : int
        Dimension of the tracked spectral subspace; 0 turns the subspace off (the network
        then sees all ``n_bins`` normalized values).
    cov_horizon : int
        Frames of the running second-moment matrix once warm.
    lag : int
        Frames the network's output trails its input; the statistics of the last ``lag``
        frames are kept to map delayed outputs back to counts.
    batch : int
        Streams held side by side.
    """

    def __init__(
        self,
        n_bins: int,
        *,
        horizon: int,
        floor: float,
        rank: int = 0,
        cov_horizon: int = 300,
        lag: int = 0,
        batch: int = 1,
    ):
        if horizon < 1 or cov_horizon < 1:
            raise ValueError(f"horizons must be >= 1 frame, got {horizon}, {cov_horizon}")
        if not 0 <= rank <= n_bins:
            raise ValueError(f"rank must be in 0..{n_bins}, got {rank}")
        self.n_bins, self.horizon, self.floor = n_bins, horizon, float(floor)
        self.rank, self.cov_horizon, self.lag, self.batch = rank, cov_horizon, lag, batch
        self.n_features = 2 * rank if rank else n_bins
        self.n_outputs = rank if rank else n_bins
        self.mean = np.zeros((batch, n_bins))
        self.count = np.zeros(batch, dtype=np.int64)
        # Statistics of the last `lag` frames: b, s and (with a subspace) U, for delayed outputs.
        self.hist_b = np.zeros((batch, lag, n_bins))
        self.hist_s = np.ones((batch, lag, n_bins))
        if rank:
            # float32: the subspace only steers the projection, and it halves the per-frame cost.
            self.cov = np.zeros((batch, n_bins, n_bins), dtype=np.float32)
            self.basis = np.repeat(_initial_basis(n_bins, rank)[None], batch, axis=0).astype(np.float32)  # (B, W, r)
            self.hist_u = np.zeros((batch, lag, n_bins, rank), dtype=np.float32)

    def reset(self, index: int | None = None) -> None:
        """Forget the past of stream ``index`` (all streams if None)."""
        sl = slice(None) if index is None else index
        self.mean[sl] = 0.0
        self.count[sl] = 0
        self.hist_b[sl] = 0.0
        self.hist_s[sl] = 1.0
        if self.rank:
            self.cov[sl] = 0.0
            self.basis[sl] = _initial_basis(self.n_bins, self.rank)
            self.hist_u[sl] = 0.0

    def features(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Advance by a chunk ``x`` (B, n, W) of counts.

        Returns ``(feat, stats)``: ``feat`` (B, n, n_features) float32 for the network, and
        the per-frame statistics needed to map its output back to counts.
        """
        bsz, n, w = x.shape
        if bsz != self.batch or w != self.n_bins:
            raise ValueError(f"expected a chunk (batch={self.batch}, n, {self.n_bins}), got {x.shape}")
        x = x.astype(np.float64, copy=False)
        b = np.empty((bsz, n, w))
        for i in range(n):  # a recurrence: cheap vector ops per frame
            self.count += 1
            alpha = 1.0 / np.minimum(self.count, self.horizon)
            self.mean += alpha[:, None] * (x[:, i] - self.mean)
            b[:, i] = self.mean
        s = np.sqrt(np.maximum(b, 0.0) + self.floor)
        xn = (x - b) / s
        stats = {"b": b, "s": s}
        if not self.rank:
            return xn.astype(np.float32), stats
        r = self.rank
        xn32 = xn.astype(np.float32)
        z = np.empty((bsz, n, r), dtype=np.float32)
        lam = np.empty((bsz, n, r), dtype=np.float32)
        u_all = np.empty((bsz, n, w, r), dtype=np.float32)
        count0 = self.count - n
        for i in range(n):
            a = (1.0 / np.minimum(count0 + i + 1, self.cov_horizon)).astype(np.float32)[:, None, None]
            v = xn32[:, i]  # (B, W)
            self.cov *= 1.0 - a
            self.cov += a * v[:, :, None] * v[:, None, :]
            q, rr = np.linalg.qr(self.cov @ self.basis)  # one subspace-iteration step
            d = np.diagonal(rr, axis1=1, axis2=2)  # (B, r): ≈ eigenvalues, up to sign
            np.multiply(q, np.where(d < 0, -1.0, 1.0).astype(np.float32)[:, None, :], out=self.basis)  # keep U continuous
            lam[:, i] = np.abs(d)
            u_all[:, i] = self.basis
            z[:, i] = (v[:, None, :] @ self.basis)[:, 0]
        stats["u"] = u_all
        feat = np.concatenate([z, np.log(lam + 1e-3)], axis=2)
        return feat.astype(np.float32), stats

    def target(self, clean: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
        """What the network should output for ``clean`` (B, n, W) counts, frame by frame."""
        tn = (clean - stats["b"]) / stats["s"]
        if self.rank:
            tn = (tn[:, :, None, :].astype(np.float32) @ stats["u"])[:, :, 0]
        return tn.astype(np.float32)

    def reconstruct(self, out: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
        """Map network output (B, n, n_outputs), ``lag`` frames behind, back to counts.

        Advances the lag history, so call it once per chunk, after :meth:`features`.
        """
        b, s, u = stats["b"], stats["s"], stats.get("u")
        if self.lag:
            n = b.shape[1]
            fb = np.concatenate([self.hist_b, b], axis=1)
            fs = np.concatenate([self.hist_s, s], axis=1)
            self.hist_b[:], self.hist_s[:] = fb[:, n:], fs[:, n:]
            b, s = fb[:, :n], fs[:, :n]
            if self.rank:
                fu = np.concatenate([self.hist_u, u], axis=1)
                self.hist_u[:] = fu[:, n:]
                u = fu[:, :n]
        yn = (u @ out[..., None])[..., 0] if self.rank else out
        return b + s * yn
