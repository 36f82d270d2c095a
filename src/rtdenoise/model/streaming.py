"""Causal layers with explicit streaming state, and the base class of every model family.

In the style of moshi's streaming convs: every layer is a pure function of
``(x, previous) -> (y, new_previous)``, where ``previous`` holds the last
``(k_t − 1) · dilation`` input rows along time. Offline, ``previous`` is zeros, so training
on clips, offline denoising and frame-by-frame streaming run the same code and "streaming
equals offline" holds by construction. The functional form is also what is exported to
ONNX/TensorRT, with the states as named inputs and outputs.

A state's name is its layer's dotted path in the module tree plus ``.previous``
(``layers.3.previous``, ``taps.previous``): :class:`CausalModel` derives the names once
from the tree, so a family never spells them out.

Layouts: time is axis 2, ``(B, C, T)`` for 1-D layers and ``(B, C, T, *spatial)`` for
layers that also convolve over space (a spectrum's wavelengths, an image's pixels).
"""

from __future__ import annotations

import torch
from torch import nn


class StreamingLayer(nn.Module):
    """A layer that prepends the last ``context`` input rows it saw to each new chunk.

    ``scale``: how many times smaller than the model's spatial grid this layer's rows are
    along each spatial axis (a U-Net's lower levels); their shape follows from the frame's.
    """

    state_name = ""  # set by CausalModel from the module tree: "<path>.previous"
    time_axis = 2  # (B, C, T, ...); image layers use 1: (B, T, C, H, W)

    def __init__(self, channels: int, context: int, *, scale: int = 1):
        super().__init__()
        if context < 0:
            raise ValueError(f"context must be >= 0 frames, got {context}")
        self.channels = channels  # channels of the rows kept
        self.context = context
        self.scale = scale

    def state_shape(self, batch: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
        grid = tuple(d // self.scale for d in spatial)
        if self.time_axis == 1:
            return (batch, self.context, self.channels, *grid)
        return (batch, self.channels, self.context, *grid)

    def with_past(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(previous ++ x, the last context rows of that)`` along time.

        A layer with no context keeps no rows: ``previous`` is not read (it may be None,
        as in an exported graph, where such states are left out).
        """
        a = self.time_axis
        if not self.context:
            return x, x.narrow(a, x.shape[a], 0)
        xc = torch.cat([previous, x], dim=a)  # P + T rows along time
        return xc, xc.narrow(a, xc.shape[a] - self.context, self.context)


class CausalConv(StreamingLayer):
    """A convolution causal along time (axis 2); "same" along wavelength for 2-D kernels.

    ``kernel_w=None`` makes a ``Conv1d`` over ``(B, C, T)``; an int makes a ``Conv2d`` over
    ``(B, C, T, W)`` with kernel ``(kernel_t, kernel_w)``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_t: int, *, dilation: int = 1, kernel_w: int | None = None):
        if kernel_t < 1 or dilation < 1:
            raise ValueError(f"kernel_t and dilation must be >= 1, got {kernel_t}, {dilation}")
        super().__init__(c_in, (kernel_t - 1) * dilation)
        if kernel_w is None:
            self.conv = nn.Conv1d(c_in, c_out, kernel_t, dilation=dilation)
        else:
            if kernel_w % 2 != 1:
                raise ValueError(f"kernel_w must be odd for 'same' padding along wavelength, got {kernel_w}")
            self.conv = nn.Conv2d(c_in, c_out, (kernel_t, kernel_w), dilation=(dilation, 1), padding=(0, kernel_w // 2))

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc, new = self.with_past(x, previous)
        return self.conv(xc), new


class History(StreamingLayer):
    """Prepends the last ``context`` rows seen to its input: ``(B, C, T) -> (B, C, context + T)``.

    Row ``j`` of the output is input row ``t0 - context + j``. Slicing the first ``T`` rows
    delays the input by ``context`` frames; sliding windows over it give per-frame taps.
    """

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.with_past(x, previous)


State = dict[str, torch.Tensor]


class CausalModel(nn.Module):
    """The base of every model family: a causal network with per-layer streaming state.

    A family (one subclass per kind of model, registered in
    :data:`rtdenoise.model.config.FAMILIES` under its ``arch``) builds its layers, calls
    :meth:`_name_states`, and implements :meth:`step`. The classmethods describe the family
    to everything that must not build the network (the engines' front end, checkpoints).

    ``step(x, state) -> (out, new_state)`` advances by a chunk of front-end features and
    returns the network's output for the frames ``lag`` behind; :meth:`forward` is the same
    step from a zero state (training on clips, offline use).
    """

    arch = ""
    modality = "spectral"  # what a frame is: "spectral" (W,) or "imaging" (H, W)
    spatial: tuple[int, ...] = ()  # trailing axes of the state rows (e.g. (W,) for a 2-D kernel)

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- what the family needs around the network --------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Raise ValueError for a config this family cannot build."""

    @classmethod
    def default_dilations(cls, depth: int) -> list[int]:
        """Dilations along time when the config gives none: the 57-frame trunk at depth 8."""
        return [1, 2, 4, 8, 1, 2, 4, 1] if depth == 8 else []

    @classmethod
    def receptive_field(cls, config) -> int:
        """Frames of input (the current one included) that one output depends on."""
        d = config.dilations or [1] * config.depth
        return 1 + sum((config.kernel_t - 1) * di for di in d)

    @classmethod
    def frame_shape(cls, config) -> tuple[int | None, ...]:
        """The frames this family takes; None where any size goes (an image's H and W)."""
        return (config.n_bins,)

    @classmethod
    def frame_sizes(cls, config) -> dict:
        """What frames the model takes, for ``rtdenoise info``: ``{"min": shape, "max": shape}``."""
        return {"min": list(cls.frame_shape(config)), "max": list(cls.frame_shape(config))}

    @classmethod
    def check_frame_shape(cls, config, shape: tuple[int, ...]) -> None:
        """Raise ValueError, with the fix, for frames of a shape this model cannot take."""

    @classmethod
    def frontend(cls, config, batch: int = 1, frame: tuple[int, ...] | None = None):
        """A fresh causal front end for ``batch`` streams of frames of shape ``frame``."""
        raise NotImplementedError

    # -- streaming state ---------------------------------------------------------------
    def _name_states(self) -> None:
        self._stateful = [(name, m) for name, m in self.named_modules() if isinstance(m, StreamingLayer)]
        for name, m in self._stateful:
            m.state_name = f"{name}.previous"

    def state_names(self) -> list[str]:
        return [m.state_name for _, m in self._stateful]

    def state_spatial(self, frame: tuple[int, ...] | None) -> tuple[int, ...]:
        """The spatial grid of the state rows for frames of shape ``frame``."""
        return self.spatial

    def state_shapes(self, batch: int, frame: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
        spatial = self.state_spatial(frame)
        return {m.state_name: m.state_shape(batch, spatial) for _, m in self._stateful}

    def init_state(self, batch: int, *, frame: tuple[int, ...] | None = None, device=None, dtype=torch.float32) -> State:
        """Zero state for ``batch`` streams of frames of shape ``frame``: what an offline pass starts from."""
        return {k: torch.zeros(s, device=device, dtype=dtype) for k, s in self.state_shapes(batch, frame).items()}

    def check_state(self, state: dict) -> None:
        """Raise ValueError unless ``state`` has exactly this model's state names."""
        expected = set(self.state_names())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"state keys do not match the model: missing {missing}, extra {extra}")

    # -- the network -------------------------------------------------------------------
    def _layers(self, h: torch.Tensor, state: State, new: State) -> torch.Tensor:
        """The conv trunk (``self.layers``), ReLU between layers, states read and written."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h, new[layer.state_name] = layer(h, state[layer.state_name])
            if i < last:
                h = torch.relu(h)
        return h

    def _trunk_layers(self, c_in: int, c_out: int, *, kernel_w: int | None = None) -> nn.ModuleList:
        c = self.config
        dil = c.dilations or [1] * c.depth
        chans = [c_in] + [c.width] * (c.depth - 1) + [c_out]
        return nn.ModuleList(
            CausalConv(chans[i], chans[i + 1], c.kernel_t, dilation=dil[i], kernel_w=kernel_w) for i in range(c.depth)
        )

    def _init_trunk(self) -> None:
        # He init keeps activations at unit scale through the ReLUs; the family then sets
        # the last layer so the untrained model is the identity.
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.conv.weight, nonlinearity="relu")
            nn.init.zeros_(layer.conv.bias)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: the same step from a zero state. ``x`` (B, T, *F) -> (B, T, *C)."""
        frame = tuple(x.shape[2:]) if self.modality == "imaging" else None
        out, _ = self.step(x, self.init_state(x.shape[0], frame=frame, device=x.device, dtype=x.dtype))
        return out

