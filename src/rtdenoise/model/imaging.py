"""Imaging families: causal denoisers for microscope movies, frames ``(H, W)`` of any size.

Both are residual (the trunk predicts the noise of frame ``t − lag`` from frames ``≤ t``
and the output is that frame minus it), convolutional in space ("same" padding, so a model
trained on patches runs on any frame size) and causal in time, with the same per-layer
streaming state as the spectral models. The front end keeps a running baseline and a
√-scale per pixel (``frontend.py``), so the network works in noise units whatever the
brightness.

- :class:`CausalUNet` (``arch="imaging-unet"``): the frame is split losslessly into its
  four 2 × 2 phases (pixel-unshuffle, as FFDNet does), the trunk runs at ½ and ¼ of the
  resolution with causal temporal filters at both, most of them at ¼, and the noise comes
  back through pixel-shuffle. The work per pixel is a fraction of a full-resolution
  network's, which is what keeps 512 × 512 frames cheap on a CPU.
- :class:`Factorized` (``arch="imaging-fact"``): at full resolution throughout, a spatial
  k × k convolution before each causal temporal one (2-D spatial + 1-D temporal).

With ``config.rates`` (the default for new models), :class:`Leaky` integrators of the input
join the frame as input channels: a fading memory of tens of frames at every pixel, for one
frame of state each.

Tensors are frame-major, ``(B, T, C, H, W)``: every spatial convolution is a ``Conv2d``
over the ``B·T`` frames (a free reshape; CPU ``Conv3d`` kernels were 14× slower for the
same work), and a temporal filter stacks its taps on the channels for one 1 × 1
``Conv2d``. ``depth`` counts the temporal layers, one dilation each (default 1, 2, 4, …);
with 3 taps the temporal receptive field is ``1 + 2 · Σ dilations`` frames (31 at depth 4:
1 s at 30 Hz).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtdenoise.model.frontend import FrontEnd
from rtdenoise.model.streaming import CausalModel, History, State, StreamingLayer

MIN_SIDE = 16  # pixels: smaller frames give the U-Net's lowest level less than 4 × 4


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B·T, C, H, W)."""
    return x.reshape(-1, *x.shape[2:])


def _movie(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B·T, C, H, W) -> (B, T, C, H, W), B and T from ``like``."""
    return y.reshape(like.shape[0], like.shape[1], *y.shape[1:])


class FrameConv(nn.Module):
    """A spatial convolution of every frame: ``(B, T, C, H, W) -> (B, T, C', H', W')``, no state.

    ``stride=2`` halves the grid; ``up=True`` doubles it (a 2 × 2 transposed convolution).
    """

    def __init__(self, c_in: int, c_out: int, k: int = 3, *, stride: int = 1, up: bool = False):
        super().__init__()
        if up:
            self.conv = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:
            self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _movie(self.conv(_frames(x)), x)


class TemporalConv(StreamingLayer):
    """A causal filter along time at every pixel, ``kernel_t`` taps ``dilation`` frames apart.

    ``(B, T, C, H, W) -> (B, T, C, H, W)``. A 1 × 1 convolution first projects each frame
    to ``keep`` channels; the layer keeps the last ``(kernel_t − 1)·dilation`` of those
    projected frames, stacks the taps on the channels and mixes them back to ``C`` with one
    1 × 1 ``Conv2d``. The projection is what makes long filters affordable: a step copies
    its state, so the state's size, not the arithmetic, dominates a large frame.
    """

    time_axis = 1

    def __init__(self, channels: int, kernel_t: int, *, dilation: int = 1, scale: int = 1, keep: int | None = None):
        if kernel_t < 1 or dilation < 1:
            raise ValueError(f"kernel_t and dilation must be >= 1, got {kernel_t}, {dilation}")
        keep = keep or channels
        super().__init__(keep, (kernel_t - 1) * dilation, scale=scale)
        self.kernel_t, self.dilation = kernel_t, dilation
        self.project = nn.Conv2d(channels, keep, 1) if keep != channels else None
        self.conv = nn.Conv2d(kernel_t * keep, channels, 1)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.project is not None:
            x = _movie(self.project(_frames(x)), x)
        xc, new = self.with_past(x, previous)  # (B, P + T, keep, H, W)
        t, d = x.shape[1], self.dilation
        taps = torch.cat([xc[:, j * d : j * d + t] for j in range(self.kernel_t)], dim=2)  # oldest first
        return _movie(self.conv(_frames(taps)), x), new


class Leaky(StreamingLayer):
    """Leaky integrators of the input at fixed rates, one frame of state each.

    ``(B, T, C, H, W) -> (B, T, C + R·C, H, W)``: the input, then for each rate ``a_r`` the
    exponential moving average ``e_t = e_{t-1} + a_r (x_t - e_{t-1})`` of its ``C`` channels
    (in noise units, around the running baseline), from the last state ``e`` (zero when
    cold). A chunk is one matrix product along time with frames kept first (no large
    transpose), so any chunk length exports. This is the long, fine-grained memory the
    trunk lacks (its finest temporal layer sees 3 frames): a Gaussian in space on top of
    these is the best causal classical filter, and the network can learn it and better.
    Per pixel, so it may run on the 2 × 2 phases of a frame (the U-Net's ½ grid) as well
    as on the frame: the same numbers.
    """

    time_axis = 1

    def __init__(self, rates: list[float], channels: int = 1, *, scale: int = 1):
        super().__init__(len(rates) * channels, 1, scale=scale)
        self.register_buffer("rates", torch.tensor(rates, dtype=torch.float32), persistent=False)  # the config holds them

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = x.shape[:2]
        i = torch.arange(t, device=x.device, dtype=x.dtype)
        age = i[:, None] - i[None, :]  # (T, T): frames from input s to output t
        a = self.rates.to(x.dtype)[None, :, None]  # (1, R, 1)
        w = torch.where(age[:, None, :] >= 0, a * (1.0 - a) ** age[:, None, :].clamp(min=0), torch.zeros_like(a))  # (T, R, T)
        carry = (1.0 - a) ** (i[:, None, None] + 1)  # (T, R, 1): what is left of the state at each output
        flat = x.reshape(b, t, -1)  # (B, T, C·H·W)
        e = w.reshape(-1, t) @ flat  # (B, T·R, C·H·W)
        e = e.reshape(b, t, -1, flat.shape[2]) + carry[None] * previous.reshape(b, 1, -1, flat.shape[2])  # (B, T, R, C·H·W)
        e = e.reshape(b, t, -1, x.shape[3], x.shape[4])  # (B, T, R·C, H, W): rate-major, as with_leaky lays the weights
        return torch.cat([x, e], dim=2), e[:, t - 1 :]


class _ImagingModel(CausalModel):
    """Movies ``(B, T, H, W)`` in noise units -> denoised ``(B, T, H, W)``, ``lag`` behind."""

    modality = "imaging"
    multiple = 1  # the trunk's grid: the front end pads frames (edge values) to a multiple of this

    def __init__(self, config):
        super().__init__(config)
        self.c_in = 1 + len(config.rates)  # the frame and its leaky integrals
        self._build()
        self.delay = History(1, config.lag)  # the input, lag frames late: what the noise is taken from
        self.delay.time_axis = 1
        for m in self.modules():  # He init; the last layer near zero: the untrained model is ~ the identity
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.out.conv.weight.data.mul_(0.01)
        self._name_states()

    def _build(self) -> None:
        raise NotImplementedError

    def _trunk(self, h: torch.Tensor, state: State, new: State) -> torch.Tensor:
        raise NotImplementedError

    def _temporal(self, x: torch.Tensor, layer: TemporalConv, state: State, new: State) -> torch.Tensor:
        y, new[layer.state_name] = layer(x, state[layer.state_name])
        return y

    def _leaky(self, x: torch.Tensor, state: State, new: State) -> torch.Tensor:
        """``x`` with its leaky integrals appended on the channels (``x`` alone without rates)."""
        return self._temporal(x, self.leaky, state, new) if self.config.rates else x

    # -- the family --------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        if config.width < 1 or config.kernel_w % 2 != 1:
            raise ValueError(f"width must be >= 1 and kernel_w odd, got {config.width} and {config.kernel_w}")

    @classmethod
    def default_dilations(cls, depth: int) -> list[int]:
        return [2**i for i in range(depth)]

    @classmethod
    def frame_shape(cls, config) -> tuple[None, None]:
        return (None, None)

    @classmethod
    def frame_sizes(cls, config) -> dict:
        return {"min": [MIN_SIDE, MIN_SIDE], "max": None}  # any larger frame: convolutional in space

    @classmethod
    def check_frame_shape(cls, config, shape: tuple[int, ...]) -> None:
        if min(shape) < MIN_SIDE:
            raise ValueError(
                f"frames of {shape[0]} × {shape[1]} pixels are smaller than this model's {MIN_SIDE} × {MIN_SIDE} "
                "minimum; give whole frames (crop or bin less)"
            )

    @classmethod
    def frontend(cls, config, batch: int = 1, frame=None) -> FrontEnd:
        if frame is None:
            raise ValueError("an imaging front end needs the frame shape (H, W)")
        return FrontEnd(frame, horizon=config.horizon, floor=config.floor, rank=0, lag=config.lag, batch=batch,
                        pad_to=cls.multiple, gain=config.gain, offset=config.offset, register=config.register)

    # -- shapes and the step -----------------------------------------------------------
    def _grid(self, h: int, w: int) -> tuple[int, int]:
        m = self.multiple
        return -(-h // m) * m, -(-w // m) * m

    def state_spatial(self, frame):
        if frame is None:
            raise ValueError("an imaging model's state needs the frame shape (H, W)")
        return self._grid(*frame)

    def step(self, xn: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``xn`` (B, T, H', W') on the model's grid (the front end pads frames to it)."""
        x = xn.unsqueeze(2)  # (B, T, 1, H', W')
        new = {}
        past, new[self.delay.state_name] = self.delay(x, state[self.delay.state_name])
        noise = self._trunk(x, state, new)
        return (past[:, : x.shape[1]] - noise)[:, :, 0], new  # remove the predicted noise of frame t - lag


class Factorized(_ImagingModel):
    """Full resolution: [spatial k×k, causal temporal] × depth, then a spatial k×k to the noise."""

    arch = "imaging-fact"

    def _build(self) -> None:
        c, k = self.config.width, self.config.kernel_w
        dil = self.config.dilations or [1] * self.config.depth
        self.space = nn.ModuleList(FrameConv(self.c_in if i == 0 else c, c, k) for i in range(len(dil)))
        self.time = nn.ModuleList(TemporalConv(c, self.config.kernel_t, dilation=d) for d in dil)
        self.out = FrameConv(c, 1, k)
        if self.config.rates:
            self.leaky = Leaky(self.config.rates)

    def _trunk(self, h, state, new):
        h = self._leaky(h, state, new)
        for space, time in zip(self.space, self.time):
            h = torch.relu(self._temporal(torch.relu(space(h)), time, state, new))
        return self.out(h)


class CausalUNet(_ImagingModel):
    """Pixel-unshuffle to ½; a level at ½ (``2·width`` channels) and one at ¼ (``4·width``).

    The first temporal layer (dilation ``dilations[0]``) runs at ½, the rest at ¼, each
    keeping ``width`` channels of history; a 2 × 2
    transposed convolution brings ¼ back to ½, added to the ½ features (a skip), and
    pixel-shuffle gives the full-resolution noise.
    """

    arch = "imaging-unet"
    multiple = 4

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        d0 = (config.dilations or [1])[0]
        most = (config.kernel_t - 1) * d0
        if config.lag > most:
            # Only the first temporal layer sees frames at ½ resolution; the frame being denoised
            # (t − lag) must be among its taps, or its detail reaches the output only through ¼.
            raise ValueError(
                f"imaging-unet with kernel_t={config.kernel_t} and a first dilation of {d0} takes lag <= {most}; "
                f"got lag {config.lag}: the frame being denoised would be out of its finest temporal layer's view "
                f"(use a smaller lag, or the imaging-fact family)"
            )

    def _build(self) -> None:
        c, k, kt = self.config.width, self.config.kernel_w, self.config.kernel_t
        d = self.config.dilations or [1] * self.config.depth
        self.half_in = FrameConv(4 * self.c_in, 2 * c, k)  # 2 x 2 phases of each input channel
        self.half_time = TemporalConv(2 * c, kt, dilation=d[0], scale=2, keep=c)
        self.half_mix = FrameConv(2 * c, 2 * c, k)
        self.down = FrameConv(2 * c, 4 * c, k, stride=2)
        self.quarter_time = nn.ModuleList(TemporalConv(4 * c, kt, dilation=di, scale=4, keep=c) for di in d[1:])
        self.quarter_mix = FrameConv(4 * c, 4 * c, k)
        self.up = FrameConv(4 * c, 2 * c, up=True)
        self.half_out = FrameConv(2 * c, 2 * c, k)
        self.out = FrameConv(2 * c, 4, k)  # the noise of the four 2 x 2 phases
        if self.config.rates:  # on the 2 x 2 phases: the same integrals, a quarter of the pixels per channel
            self.leaky = Leaky(self.config.rates, 4, scale=2)

    def _trunk(self, h, state, new):
        relu = torch.relu
        a = _movie(F.pixel_unshuffle(_frames(h), 2), h)  # (B, T, 4, H/2, W/2)
        a = self._leaky(a, state, new)  # (B, T, 4·c_in, H/2, W/2): phase p of channel c at 4c + p, as unshuffled
        a = relu(self.half_in(a))
        a = relu(self._temporal(a, self.half_time, state, new))
        a = relu(self.half_mix(a))
        q = relu(self.down(a))
        for layer in self.quarter_time:
            q = relu(self._temporal(q, layer, state, new))
        q = relu(self.quarter_mix(q))
        u = relu(self.half_out(relu(self.up(q) + a)))
        return _movie(F.pixel_shuffle(_frames(self.out(u)), 2), h)  # (B, T, 1, H, W)


def with_leaky(checkpoint, rates: list[float]):
    """``checkpoint`` (an imaging model without leaky integrators) grown them at ``rates``,
    their input weights zero: it denoises exactly as before, and fine-tuning learns to use
    them (hours of training kept, rather than starting again)."""
    import dataclasses

    cfg = checkpoint.config
    if cfg.family.modality != "imaging" or cfg.rates:
        raise ValueError(f"{checkpoint.name!r} is not an imaging model without leaky integrators (arch {cfg.arch!r}, "
                         f"rates {cfg.rates})")
    grown = dataclasses.replace(cfg, rates=list(rates))
    net = grown.build()
    weights = dict(checkpoint.state_dict)
    first = "half_in.conv.weight" if cfg.arch == "imaging-unet" else "space.0.conv.weight"
    w = torch.zeros_like(net.state_dict()[first])
    w[:, : weights[first].shape[1]] = weights[first]  # the frame's channels come first (phases 0-3 after unshuffle)
    weights[first] = w
    net.load_state_dict(weights)
    return dataclasses.replace(checkpoint, config=grown, state_dict=net.state_dict(), path=None)

