"""Causal front end: per-stream running statistics that put frames in the network's units.

0. **Photons** (when the model's ``gain`` and ``offset`` are set): frames become
   ``(x − offset) / gain`` first, and outputs go back the same way, so a camera's or a
   digitizer's counts reach the network in the units it was trained on.

1. **Baseline and scale** (every architecture). Per wavelength (per pixel for images),

       b_t = running mean of x up to and including t
       s_t = sqrt(max(b_t, 0) + floor)        (a Poisson count's noise std is about √b)
       xn_t = (x_t − b_t) / s_t               (noise units: one model for 100 or 50,000 counts)

   The running mean is cumulative for the first ``horizon`` frames, then an exponential
   moving average with that time constant.

   Images with ``register``: before each update the running mean is moved onto the frame
   by the rigid shift that best maps one onto the other (:func:`follow_motion`), so a
   wandering field of view leaves no edges in ``x − b`` for the network to mistake for
   noise, and ``b`` stays sharp (a fixed mean of a moving scene is a blur of it).

   Images only: the network returns ``(x − b)/s`` denoised, and cannot see ``b``'s own noise
   (shifting every frame of a pixel shifts ``b`` alike and leaves ``xn`` unchanged), so the
   output's baseline is ``b`` with its pixel-scale detail shrunk toward a 3 × 3 blur by
   the share that is noise (:func:`shrink_baseline`): the noise of a mean of few frames,
   the largest error of a cold start at low light. The shrinking fades out over the second
   ``horizon`` frames, when it no longer helps, and costs nothing after that.

   Spectral subspace front ends with ``slow_horizon`` (≥ ``horizon``): the output's
   baseline is not ``b`` itself but a slow mean ``m`` (the same schedule over
   ``slow_horizon`` frames) plus ``b − m`` smoothed across wavelength (a Gaussian of
   ``smooth_bins``). ``b``'s own noise, a 30 s mean's, is white
   across bins and went straight to the output outside the subspace the network returns;
   what ``b`` follows that ``m`` cannot (bleaching, slow hemodynamics, detector drift) is
   smooth across wavelength and stays. The two means agree for the first ``horizon``
   frames, so nothing changes while the baseline is cumulative.

2. **Spectral subspace** (``rank > 0``). Photometry spectra are nearly low-rank across
   wavelengths. The front end keeps a running second-moment matrix ``C`` of ``xn``
   (same cumulative-then-EMA schedule over ``cov_horizon`` frames) and tracks its top-``rank``
   eigenvectors ``U`` by one step of subspace iteration per frame (``U ← orth(C U)``), which
   keeps ``U`` continuous in time: no eigen-solver spikes, no sign flips. The network then
   sees the coefficients ``z = Uᵀ xn`` and the log eigenvalues (how much signal each
   direction carries), and returns denoised coefficients ``ẑ``; the frame is ``U ẑ``.
   This is the classical causal PCA projection, kept up to date, with a learned temporal
   denoiser on top.

:meth:`FrontEnd.normalize` advances the statistics by a chunk and returns a
:class:`Normalized` record; :meth:`FrontEnd.to_counts` maps the network's output back with
it and changes nothing, :meth:`FrontEnd.target` turns a clean chunk into the network's
training target.

Everything uses only the past, and all of it is state updated in place per stream, so a
stream can be processed in chunks of any size with identical results. It runs on the host
in numpy for every backend, except that CUDA torch runs a per-element front end (no subspace)
on the GPU as :class:`~rtdenoise.backends.torch_engine.TorchFrontEnd`, the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Normalized:
    """One chunk in the network's units, and how to map the network's output back.

    ``B`` streams, ``n`` frames, ``W`` bins, ``r`` the subspace rank.
    """

    features: np.ndarray  # (B, n, F) float32: what the network takes
    baseline: np.ndarray  # (B, n, W) running baseline b of each frame
    scale: np.ndarray  # (B, n, W) noise scale s of each frame
    basis: np.ndarray | None  # (B, n, W, r) the tracked subspace U at each frame (None without one)
    count: np.ndarray | None = None  # (B, n) frames the running baseline of each frame had seen
    # The same statistics for the frames the outputs belong to (lag frames earlier).
    out_baseline: np.ndarray | None = None  # the output's baseline (b, unless a subspace with slow_horizon)
    out_scale: np.ndarray | None = None
    out_basis: np.ndarray | None = None
    out_count: np.ndarray | None = None  # ≤ 0 for outputs of frames before the start


def slot_view(fe, index: int):
    """A shallow copy of front end ``fe`` (numpy or torch) for its stream ``index`` alone,
    every array in ``fe.arrays()`` replaced by a view of that stream's rows (in place updates
    reach ``fe``; the arrays must be updated in place, never rebound)."""
    import copy

    view = copy.copy(fe)
    for name, value in vars(fe).items():
        if any(value is a for a in fe.arrays()):
            setattr(view, name, value[index : index + 1])
    view.batch = 1
    return view


FINE_NOISE = 0.640625  # the share of white noise's power in x − blur3(x): 1 − 2·(1/4) + (3/8)²


def blur3(x):
    """``x`` (numpy or torch, ``(..., H, W)``) blurred by [1, 2, 1]/4 along each of its last
    two axes, edge values repeated (a Gaussian of σ ≈ 0.7 px); a new array."""
    for ax in (-2, -1):
        lo, hi = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        y = 0.5 * x
        y[tuple(hi)] += 0.25 * x[tuple(lo)]
        y[tuple(lo)] += 0.25 * x[tuple(hi)]
        lo[ax], hi[ax] = 0, -1
        y[tuple(lo)] += 0.25 * x[tuple(lo)]
        y[tuple(hi)] += 0.25 * x[tuple(hi)]
        x = y
    return x


def _blur3_into(x: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """:func:`blur3` of a float32 numpy ``x`` into ``out``, ``tmp`` a scratch of its shape:
    the same arithmetic, no new array."""
    np.multiply(x, 0.5, out=tmp)
    np.multiply(x[..., :-1, :], 0.25, out=out[..., 1:, :])
    tmp[..., 1:, :] += out[..., 1:, :]
    np.multiply(x[..., 1:, :], 0.25, out=out[..., :-1, :])
    tmp[..., :-1, :] += out[..., :-1, :]
    tmp[..., 0, :] += 0.25 * x[..., 0, :]
    tmp[..., -1, :] += 0.25 * x[..., -1, :]
    np.multiply(tmp, 0.5, out=out)
    out[..., 1:] += 0.25 * tmp[..., :-1]
    out[..., :-1] += 0.25 * tmp[..., 1:]
    out[..., 0] += 0.25 * tmp[..., 0]
    out[..., -1] += 0.25 * tmp[..., -1]
    return out


SCRATCH_MAX = 1 << 22  # elements: chunks up to this size keep their scratch (4 float32 arrays) between calls


def shrink_baseline(b, s, count, horizon: int, scratch: dict | None = None):
    """What to subtract from the running baselines ``b`` (B, n, H, W) of image frames whose
    means had seen ``count`` (B, n) frames: their noise, as far as a local Wiener rule finds it.

    ``b``'s detail ``d = b − blur3(b)`` holds the noise of the mean (variance ``s² f`` per
    pixel, ``f`` = 1/count while the mean is cumulative, then the EMA's share, so
    ``FINE_NOISE·s²f`` in ``d``) and the pixel-scale structure of the scene. Where the local
    power ``P`` of ``d`` (5 × 5) is mostly that noise, ``d`` goes: the correction is
    ``min(1, FINE_NOISE·s²f/P)·d``, times a weight that is 1 for the first ``horizon`` frames
    and falls to 0 over the next ``horizon`` (then the mean has settled and shrinking it
    gains nothing). Frames before the start (count ≤ 0) are left alone.

    numpy or torch alike; computed and returned in float32 (it only corrects ``b``). numpy
    works in place in 4 arrays, kept in ``scratch`` (a dict) for chunks of up to
    ``SCRATCH_MAX`` elements: at 512 × 512 fresh arrays cost more than the arithmetic (each
    new megabyte is mapped and faulted in), 7 ms a frame against 3. The result is then one of
    those arrays, valid until the next call with the same ``scratch``.
    """
    h = float(horizon)
    j = count.astype(np.float64) if isinstance(count, np.ndarray) else count.double()
    a = 1.0 / h
    r = (1.0 - a) ** (2.0 * (j - h).clip(min=0.0))  # what is left of the cumulative mean's variance
    f = r / j.clip(min=1.0, max=h) + (1.0 - r) * a / (2.0 - a)
    weight = (2.0 - j / h).clip(min=0.0, max=1.0) * (j >= 1)
    if isinstance(b, np.ndarray):
        return _shrink_numpy(b, s, (FINE_NOISE * f).astype(np.float32), weight.astype(np.float32), scratch)
    bb, s32 = b.float(), s.float()
    d = bb - blur3(bb)
    p = blur3(blur3(d * d)).clip(min=1e-12)
    v = s32 * s32 * (FINE_NOISE * f).float()[..., None, None]
    return (v / p).clip(max=1.0) * d * weight.float()[..., None, None]


def _shrink_numpy(b: np.ndarray, s: np.ndarray, k: np.ndarray, weight: np.ndarray, scratch: dict | None) -> np.ndarray:
    """:func:`shrink_baseline`'s arithmetic for numpy, in the same order, in place."""
    if scratch is not None and b.size <= SCRATCH_MAX:
        if scratch.get("shape") != b.shape:
            scratch.clear()
            scratch.update(shape=b.shape, arrays=[np.empty(b.shape, np.float32) for _ in range(4)])
        bb, d, p, tmp = scratch["arrays"]
    else:
        bb, d, p, tmp = (np.empty(b.shape, np.float32) for _ in range(4))
    np.copyto(bb, b, casting="same_kind")
    np.subtract(bb, _blur3_into(bb, d, tmp), out=d)  # d = b − blur3(b)
    np.multiply(d, d, out=bb)
    _blur3_into(_blur3_into(bb, p, tmp), bb, tmp)  # bb = P, the local power of d
    np.maximum(bb, 1e-12, out=bb)
    np.copyto(p, s, casting="same_kind")
    np.multiply(p, p, out=p)
    p *= k[..., None, None]  # p = v
    np.divide(p, bb, out=p)
    np.minimum(p, 1.0, out=p)
    p *= d
    p *= weight[..., None, None]
    return p


REGISTER_AFTER = 8  # frames a stream's mean has seen before it follows the frame's motion
MAX_STEP_PX = 2.0  # the most one frame moves the baseline, px per axis; a larger jump is followed over a few frames
PRIOR_STEP_PX = 1.0  # std of a frame's motion the estimate shrinks toward 0 with
REANCHOR_PX = 8.0  # drift beyond this (px) re-anchors the mean on the frame: what is outside the field of view is lost


def _fourier_shifts(images, shifts):
    """``images`` (B, H, W) moved by ``shifts`` (B, 2) px, edge values repeated beyond the
    frame; exact inside it (moving an image to and fro blurs nothing). In float32 (an error
    of 1e-7 of the values, far below their noise): numpy returns float32, torch the input's dtype."""
    from scipy import fft as sfft

    torch_ = not isinstance(images, np.ndarray)
    h, w = images.shape[1:]
    p = int(np.ceil(REANCHOR_PX + MAX_STEP_PX)) + 1  # the farthest a pixel comes from
    size = (sfft.next_fast_len(h + 2 * p, real=True), sfft.next_fast_len(w + 2 * p, real=True))
    pads = [(p, size[0] - h - p), (p, size[1] - w - p)]
    if torch_:
        import torch
        import torch.nn.functional as F

        dev = images.device
        spec = torch.fft.rfft2(F.pad(images.float(), (*pads[1], *pads[0]), mode="replicate"))
        ky = torch.fft.fftfreq(size[0], device=dev, dtype=torch.float64)
        kx = torch.fft.rfftfreq(size[1], device=dev, dtype=torch.float64)
        d = shifts.double()
        py = torch.exp(-2j * torch.pi * d[:, 0, None] * ky).to(torch.complex64)  # separable: (B, H') and (B, W')
        px = torch.exp(-2j * torch.pi * d[:, 1, None] * kx).to(torch.complex64)
        out = torch.fft.irfft2(spec * py[:, :, None] * px[:, None, :], s=size)
        return out[:, p : p + h, p : p + w].to(images.dtype)
    spec = sfft.rfft2(np.pad(images.astype(np.float32, copy=False), [(0, 0), *pads], mode="edge"))
    py = np.exp(-2j * np.pi * shifts[:, 0, None] * sfft.fftfreq(size[0])).astype(np.complex64)
    px = np.exp(-2j * np.pi * shifts[:, 1, None] * sfft.rfftfreq(size[1])).astype(np.complex64)
    spec *= py[:, :, None]
    spec *= px[:, None, :]
    return sfft.irfft2(spec, s=size)[:, p : p + h, p : p + w]


def follow_motion(mean, shift, frame, count, alpha, floor: float):
    """One frame of a running mean that follows the frame's rigid motion; numpy (float64) or torch.

    ``mean`` (B, H, W) is kept in its own (reference) coordinates and ``shift`` (B, 2) is
    where the field of view is now against them, ``(dy, dx)`` px; both are updated in place.
    Returns the baseline ``b`` of ``frame`` (B, H, W): the updated mean, moved onto it.

    The new shift is one Gauss–Newton step of ``frame(p) ≈ m(p − δ)`` from the last one,
    ``m`` the mean moved by the last shift: least squares of ``frame − m`` on ``−∇m``
    (central differences), each pixel weighted by its Poisson noise ``1 / (m + floor)``
    (a gradient of ``m`` blurred by :func:`blur3` did 0.1 dB worse), with a Gaussian prior of
    :data:`PRIOR_STEP_PX` on the step, clipped to :data:`MAX_STEP_PX`; ``m`` follows the
    step to first order (``m − ∇m·step``). The frame, moved back by the new shift, then
    updates the mean (weight ``alpha``, (B,)). Images move by Fourier shifts
    (:func:`_fourier_shifts`).

    On a flat image the shift wanders with the noise, which moves a flat mean nowhere (a
    tighter prior, or discounting the mean's own noise from the fit, stopped it following
    1-photon movies). Streams whose mean has seen fewer than :data:`REGISTER_AFTER` frames
    (``count``, (B,)) update as without motion; a stream whose shift passes
    :data:`REANCHOR_PX` has its mean re-anchored on the frame (the new shift 0).
    """
    torch_ = not isinstance(mean, np.ndarray)
    if torch_:
        import torch
    a = alpha.reshape(-1, 1, 1)
    ready = count >= REGISTER_AFTER
    if not torch_ and not ready.any():  # (torch computes it all: a CUDA graph takes no branch on the data)
        mean += a * (frame - mean)
        return mean.copy()
    if not torch_:  # float32 from here to the update: half the memory traffic
        frame = frame.astype(np.float32, copy=False)
        a = a.astype(np.float32, copy=False)
    m = _fourier_shifts(mean, shift)
    gy, gx = m * 0.0, m * 0.0
    gy[:, 1:-1] = 0.5 * (m[:, 2:] - m[:, :-2])
    gx[:, :, 1:-1] = 0.5 * (m[:, :, 2:] - m[:, :, :-2])
    w = 1.0 / ((m.clamp(min=0.0) if torch_ else np.maximum(m, 0.0)) + floor)
    gyw, gxw = gy * w, gx * w
    r = frame - m
    if torch_:
        dot = lambda u, v: (u * v).sum(dim=(1, 2))  # noqa: E731
    else:
        dot = lambda u, v: np.einsum("bi,bi->b", u.reshape(len(u), -1), v.reshape(len(v), -1)).astype(np.float64)  # noqa: E731
    prior = 1.0 / PRIOR_STEP_PX**2
    hyy, hxx, hxy = dot(gyw, gy) + prior, dot(gxw, gx) + prior, dot(gyw, gx)
    ry, rx = dot(gyw, r), dot(gxw, r)
    det = hyy * hxx - hxy * hxy
    step = [-(hxx * ry - hxy * rx) / det * ready, -(hyy * rx - hxy * ry) / det * ready]
    step = torch.stack(step, dim=1).clamp(-MAX_STEP_PX, MAX_STEP_PX) if torch_ else np.clip(np.stack(step, axis=1), -MAX_STEP_PX, MAX_STEP_PX)
    shift += step
    step = step.to(m.dtype) if torch_ else step.astype(m.dtype)  # float32 images stay float32
    b = m - gy * step[:, 0, None, None] - gx * step[:, 1, None, None]  # m moved by the step (a fraction of a px)
    aligned = _fourier_shifts(frame, -shift)
    b = b + a * (frame - b)  # the mean updated by this frame, where the frame is
    far = (shift.abs() if torch_ else np.abs(shift)).max(1)[0 if torch_ else slice(None)] > REANCHOR_PX
    if torch_:
        r3 = ready[:, None, None]
        mean.copy_(torch.where(r3, torch.where(far[:, None, None], b, mean + a * (aligned - mean)), mean + a * (frame - mean)))
        shift.copy_(torch.where((ready & ~far)[:, None], shift, torch.zeros_like(shift)))
        return torch.where(r3, b, mean)
    if ready.all():  # the usual case: no masks, no copies
        mean += a * (aligned - mean)
    else:
        cold = ~ready
        mean[ready] += a[ready] * (aligned[ready] - mean[ready])
        mean[cold] += a[cold] * (frame[cold] - mean[cold])
        b[cold] = mean[cold]
    mean[far] = b[far]
    shift[~ready | far] = 0.0
    return b


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
    n_bins : int or tuple of int
        The frame's shape: its width W for a spectrum, ``(H, W)`` for an image. Every
        statistic but the subspace is kept per element of the frame.
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
    pad_to : int
        Images only: the features are the frame padded (edge values) at the bottom and
        right to a multiple of this, the grid the network works on; outputs are cropped
        back in :meth:`to_counts`.
    gain, offset : float
        The input's counts per photon and dark level: frames become ``(x − offset) / gain``
        before anything else, and :meth:`to_counts` maps back.
    register : bool
        Images only: the running mean follows the frame's rigid motion (:func:`follow_motion`).
    slow_horizon : int
        Subspace only (``rank > 0``): frames (0, or at least ``horizon``) of the slow mean that
        gives the output's baseline its bin-by-bin detail (0: the output's baseline is the
        running baseline itself).
    smooth_bins : float
        With ``slow_horizon``: the Gaussian's σ, in bins, that smooths the running baseline's
        departure from the slow mean.
    spectra : array (m, W), optional
        Subspace only: known absorption spectra (hemoglobin's) put in the subspace instead of
        being estimated. Each frame's first ``2m`` directions are then, orthonormalised in
        this order, ``b·ε_j / s`` (absorption of the running baseline ``b``, dark level and
        all) and ``ε_j / s`` (the part of ``b·ε_j`` the dark level adds); the other
        ``rank − 2m`` are tracked from data in their complement (the sensor's among them:
        brightness is not made a known direction, so the sensor's signal is not split).
    sensor : array (W,) or (B, W), optional
        With ``spectra``: the sensor's emission spectrum (any scale), one more known direction
        (``sensor / s``, after the ``2m``), per stream. Zeros leave it to be set in
        :attr:`sensor` before the first frame (training sets each instance's own).
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
        pad_to: int = 1,
        gain: float = 1.0,
        offset: float = 0.0,
        register: bool = False,
        slow_horizon: int = 0,
        smooth_bins: float = 0.0,
        spectra: np.ndarray | None = None,
        sensor: np.ndarray | None = None,
    ):
        if horizon < 1 or cov_horizon < 1 or slow_horizon < 0:
            raise ValueError(f"horizons must be >= 1 frame (slow_horizon 0 for none), got {horizon}, {cov_horizon}, {slow_horizon}")
        if not smooth_bins >= 0:
            raise ValueError(f"smooth_bins must be >= 0, got {smooth_bins}")
        frame = (int(n_bins),) if np.ndim(n_bins) == 0 else tuple(int(d) for d in n_bins)
        if rank and len(frame) != 1:
            raise ValueError(f"a spectral subspace needs 1-D frames, got frames of shape {frame}")
        if not 0 <= rank <= frame[0]:
            raise ValueError(f"rank must be in 0..{frame[0]}, got {rank}")
        self.frame_shape = frame
        self.n_bins, self.horizon, self.floor = frame[-1], horizon, float(floor)
        self.rank, self.cov_horizon, self.lag, self.batch = rank, cov_horizon, lag, batch
        self.shrink = len(frame) == 2  # images: the output's baseline is shrunk while cold (module doc)
        if register and len(frame) != 2:
            raise ValueError(f"only image frames (H, W) can follow motion, got frames of shape {frame}")
        self.register = bool(register)
        if slow_horizon and not rank:
            raise ValueError("slow_horizon is for a spectral subspace front end (rank > 0): outside the subspace "
                             "the output is the baseline; without one the network returns every bin")
        if slow_horizon and slow_horizon < horizon:
            raise ValueError(f"slow_horizon must be 0 or >= horizon ({horizon}), got {slow_horizon}")
        self.slow_horizon, self.smooth_bins = int(slow_horizon), float(smooth_bins)
        self.spectra = None if spectra is None else np.asarray(spectra, dtype=np.float32).reshape(-1, frame[-1])
        self.n_known = 0 if self.spectra is None else 2 * len(self.spectra)
        if self.n_known and not rank:
            raise ValueError("known spectra go in a spectral subspace: give rank > 0")
        self.sensor = None
        if sensor is not None:
            if self.spectra is None:
                raise ValueError("a known sensor spectrum goes beside known absorption spectra: give spectra too")
            self.sensor = np.zeros((batch, frame[-1]), np.float32)
            self.sensor[:] = np.asarray(sensor, dtype=np.float32)
            self.n_known += 1
        if self.n_known > rank:
            raise ValueError(f"{len(self.spectra)} known spectra take {self.n_known} directions of the subspace; "
                             f"rank must be at least that, got {rank}")
        self._scratch = {}  # shrink_baseline's work arrays (each view gets its own)
        self.gain, self.offset = float(gain), float(offset)
        self.photons = (self.gain, self.offset) != (1.0, 0.0)  # (bit-identical without: no arithmetic then)
        # What the network takes and gives per frame, after (batch, frames).
        grid = tuple(-(-d // pad_to) * pad_to for d in frame)
        self.pad = [(0, 0), (0, 0)] + [(0, g - d) for g, d in zip(grid, frame)] if grid != frame else None
        self.feature_shape = (2 * rank,) if rank else grid
        self.output_shape = (rank,) if rank else grid
        # Images in float32 (a 512 x 512 frame's statistics are megabytes, moved every frame;
        # float32 holds a running mean of counts to 1e-7 of it); spectra in float64.
        self.dtype = np.float32 if len(frame) == 2 else np.float64
        self.mean = np.zeros((batch, *frame), self.dtype)
        self.count = np.zeros(batch, dtype=np.int64)
        self.shift = np.zeros((batch, 2))  # register: where the field of view is against the mean, px
        if self.slow_horizon:
            self.slow = np.zeros((batch, *frame), self.dtype)
            if self.smooth_bins:  # (W, W): row j is how much bin j feeds each bin
                from scipy.ndimage import gaussian_filter1d

                eye = np.eye(frame[0])
                self._smooth_t = gaussian_filter1d(eye, self.smooth_bins, axis=0, mode="nearest").T.copy()
        # Statistics of the last `lag` frames for delayed outputs: the output's baseline, s and (with a subspace) U.
        self.hist_b = np.zeros((batch, lag, *frame), self.dtype)
        self.hist_s = np.ones((batch, lag, *frame), self.dtype)
        if rank:
            # float32: the subspace only steers the projection, and it halves the per-frame cost.
            self.cov = np.zeros((batch, n_bins, n_bins), dtype=np.float32)
            self.basis = np.repeat(_initial_basis(n_bins, rank)[None], batch, axis=0).astype(np.float32)  # (B, W, r)
            self.hist_u = np.zeros((batch, lag, n_bins, rank), dtype=np.float32)

    def arrays(self) -> list[np.ndarray]:
        """Every per-stream statistic, the stream first: what :meth:`view` slices."""
        return ([self.mean, self.count, self.hist_b, self.hist_s] + ([self.shift] if self.register else [])
                + ([self.slow] if self.slow_horizon else []) + ([self.cov, self.basis, self.hist_u] if self.rank else [])
                + ([self.sensor] if self.sensor is not None else []))

    def view(self, index: int) -> FrontEnd:
        """Stream ``index`` alone, as a one-stream front end whose statistics are views of
        this one's: stepping or resetting either changes both."""
        view = slot_view(self, index)
        view._scratch = {}
        return view

    def reset(self, index: int | None = None) -> None:
        """Forget the past of stream ``index`` (all streams if None)."""
        sl = slice(None) if index is None else index
        self.mean[sl] = 0.0
        self.count[sl] = 0
        self.shift[sl] = 0.0
        if self.slow_horizon:
            self.slow[sl] = 0.0
        self.hist_b[sl] = 0.0
        self.hist_s[sl] = 1.0
        if self.rank:
            self.cov[sl] = 0.0
            self.basis[sl] = _initial_basis(self.n_bins, self.rank)
            self.hist_u[sl] = 0.0

    def normalize(self, x: np.ndarray) -> Normalized:
        """Advance by a chunk ``x`` (B, n, *frame) of counts; return it in the network's units.

        The record also carries the statistics of the frames the network's outputs for
        this chunk belong to (``lag`` frames earlier), so :meth:`to_counts` needs nothing
        else and changes nothing.
        """
        bsz, n = x.shape[:2]
        if bsz != self.batch or x.shape[2:] != self.frame_shape:
            raise ValueError(f"expected a chunk (batch={self.batch}, n, {', '.join(map(str, self.frame_shape))}), got {x.shape}")
        if self.sensor is not None and not self.count.all() and not self.sensor.any(axis=1).all():  # at a start only
            raise ValueError("this front end takes the sensor's emission spectrum as a known direction and has none "
                             "for a stream: set it (FrontEnd.sensor; a model's with `rtdenoise set-sensor`)")
        x = x.astype(self.dtype, copy=False)
        if self.photons:
            x = (x - self.offset) / self.gain
        b = np.empty(x.shape, self.dtype)
        bo = np.empty(x.shape, self.dtype) if self.slow_horizon else b  # the output's baseline
        per_stream = (bsz,) + (1,) * len(self.frame_shape)
        for i in range(n):  # a recurrence: cheap vector ops per frame
            self.count += 1
            alpha = (1.0 / np.minimum(self.count, self.horizon)).astype(self.dtype)
            if self.register:
                b[:, i] = follow_motion(self.mean, self.shift, x[:, i], self.count - 1, alpha, self.floor)
                continue
            self.mean += alpha.reshape(per_stream) * (x[:, i] - self.mean)
            b[:, i] = self.mean
            if self.slow_horizon:
                self.slow += (1.0 / np.minimum(self.count, self.slow_horizon))[:, None] * (x[:, i] - self.slow)
                bo[:, i] = self.slow + self._smoothed(self.mean - self.slow)
        s = np.sqrt(np.maximum(b, 0.0) + self.floor)
        xn = (x - b) / s
        count = (self.count - n)[:, None] + np.arange(1, n + 1)
        if not self.rank:
            feat = xn.astype(np.float32)
            if self.pad:
                feat = np.pad(feat, self.pad, mode="edge")
            return self._delayed(Normalized(feat, b, s, None, count), bo)
        r, w = self.rank, self.n_bins
        xn32 = xn.astype(np.float32)
        z = np.empty((bsz, n, r), dtype=np.float32)
        lam = np.empty((bsz, n, r), dtype=np.float32)
        u_all = np.empty((bsz, n, w, r), dtype=np.float32)
        count0 = self.count - n
        k = self.n_known
        for i in range(n):
            a = (1.0 / np.minimum(count0 + i + 1, self.cov_horizon)).astype(np.float32)[:, None, None]
            v = xn32[:, i]  # (B, W)
            self.cov *= 1.0 - a
            self.cov += a * v[:, :, None] * v[:, None, :]
            # One subspace-iteration step; the known directions (if any) first, so the tracked
            # ones come out orthogonal to them (Gram-Schmidt order, a complete basis even
            # while the covariance is degenerate).
            c = self.cov @ self.basis[:, :, k:]
            q, rr = np.linalg.qr(np.concatenate([self._known(b[:, i], s[:, i]), c], axis=2) if k else c)
            d = np.diagonal(rr, axis1=1, axis2=2)  # (B, r): ≈ eigenvalues after the known ones, up to sign
            np.multiply(q, np.where(d < 0, -1.0, 1.0).astype(np.float32)[:, None, :], out=self.basis)  # keep U continuous
            lam[:, i] = np.abs(d)
            if k:  # the variance along each known direction
                qk = self.basis[:, :, :k]
                lam[:, i, :k] = (qk * (self.cov @ qk)).sum(axis=1)
            u_all[:, i] = self.basis
            z[:, i] = (v[:, None, :] @ self.basis)[:, 0]
        feat = np.concatenate([z, np.log(lam + 1e-3)], axis=2)
        return self._delayed(Normalized(feat.astype(np.float32), b, s, u_all, count), bo)

    def _known(self, b: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The known directions (see ``spectra``) for running baseline ``b`` and scale ``s``
        (B, W), not yet orthonormal: (B, W, n_known)."""
        e = self.spectra.T[None]  # (1, W, m)
        s32 = s.astype(np.float32)[:, :, None]
        known = [(b / s).astype(np.float32)[:, :, None] * e, e / s32]
        if self.sensor is not None:
            known.append(self.sensor[:, :, None] / s32)
        return np.concatenate(known, axis=2)

    def _smoothed(self, d: np.ndarray) -> np.ndarray:
        """``d`` (B, W) smoothed across bins, each stream's row by its own vector-matrix
        product (a stream's result does not depend on the batch it is stepped in)."""
        if not self.smooth_bins:
            return d
        return np.stack([row @ self._smooth_t for row in d])

    def _delayed(self, norm: Normalized, bo: np.ndarray) -> Normalized:
        """Fill in the statistics of the frames ``lag`` earlier (``bo``: the output's baseline
        of each frame of the chunk), advancing the lag history."""
        norm.out_count = norm.count - self.lag
        if not self.lag:
            norm.out_baseline, norm.out_scale, norm.out_basis = bo, norm.scale, norm.basis
            return norm
        n = norm.baseline.shape[1]
        fb = np.concatenate([self.hist_b, bo], axis=1)
        fs = np.concatenate([self.hist_s, norm.scale], axis=1)
        self.hist_b[:], self.hist_s[:] = fb[:, n:], fs[:, n:]
        norm.out_baseline, norm.out_scale = fb[:, :n], fs[:, :n]
        if self.rank:
            fu = np.concatenate([self.hist_u, norm.basis], axis=1)
            self.hist_u[:] = fu[:, n:]
            norm.out_basis = fu[:, :n]
        return norm

    def target(self, clean: np.ndarray, norm: Normalized) -> np.ndarray:
        """What the network should output for ``clean`` (B, n, *frame) counts, frame by frame."""
        if self.photons:
            clean = (clean - self.offset) / self.gain
        tn = (clean - norm.baseline) / norm.scale
        if self.rank:
            tn = (tn[:, :, None, :].astype(np.float32) @ norm.basis)[:, :, 0]
        if self.pad:
            tn = np.pad(tn, self.pad, mode="edge")
        return tn.astype(np.float32)

    def to_counts(self, out: np.ndarray, norm: Normalized) -> np.ndarray:
        """Map network output (B, n, *output_shape), ``lag`` frames behind, back to counts (B, n, *frame)."""
        u = norm.out_basis
        yn = (u @ out[..., None])[..., 0] if self.rank else out
        if self.pad:
            h, w = self.frame_shape
            yn = yn[..., :h, :w]
        b = norm.out_baseline
        if self.shrink:  # only the frames of streams still settling: a batch mixes them
            cold = (norm.out_count > 0) & (norm.out_count < 2 * self.horizon)  # (B, n)
            if cold.all():
                b = b - shrink_baseline(b, norm.out_scale, norm.out_count, self.horizon, self._scratch)
            elif cold.any():
                b = b.copy()
                b[cold] -= shrink_baseline(b[cold][None], norm.out_scale[cold][None], norm.out_count[cold][None],
                                           self.horizon, self._scratch)[0]
            else:
                self._scratch.clear()  # settled: its work arrays go
        y = b + norm.out_scale * yn
        return y * self.gain + self.offset if self.photons else y
