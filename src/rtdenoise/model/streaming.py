"""Causal layers with explicit streaming state, in the style of moshi's streaming convs.

Every layer is a pure function of ``(x, previous) -> (y, new_previous)``: ``previous`` holds
the last ``(k_t − 1) · dilation`` input rows along time. Offline, ``previous`` is zeros, so
training on clips, offline denoising and frame-by-frame streaming run the same code and
"streaming equals offline" holds by construction. The functional form is also what is
exported to ONNX/TensorRT, with the states as named inputs and outputs.

Layouts: time is axis 2, ``(B, C, T)`` for 1-D layers and ``(B, C, T, W)`` for 2-D ones.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalConv(nn.Module):
    """A convolution causal along time (axis 2); "same" along wavelength for 2-D kernels.

    ``kernel_w=None`` makes a ``Conv1d`` over ``(B, C, T)``; an int makes a ``Conv2d`` over
    ``(B, C, T, W)`` with kernel ``(kernel_t, kernel_w)``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_t: int, *, dilation: int = 1, kernel_w: int | None = None):
        super().__init__()
        if kernel_t < 1 or dilation < 1:
            raise ValueError(f"kernel_t and dilation must be >= 1, got {kernel_t}, {dilation}")
        self.c_in = c_in
        self.context = (kernel_t - 1) * dilation  # rows of the past this layer needs
        if kernel_w is None:
            self.conv = nn.Conv1d(c_in, c_out, kernel_t, dilation=dilation)
        else:
            if kernel_w % 2 != 1:
                raise ValueError(f"kernel_w must be odd for 'same' padding along wavelength, got {kernel_w}")
            self.conv = nn.Conv2d(c_in, c_out, (kernel_t, kernel_w), dilation=(dilation, 1), padding=(0, kernel_w // 2))

    def state_shape(self, batch: int, width: int) -> tuple[int, ...]:
        if isinstance(self.conv, nn.Conv1d):
            return (batch, self.c_in, self.context)
        return (batch, self.c_in, self.context, width)

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = torch.cat([previous, x], dim=2)  # (B, C, P + T, ...)
        return self.conv(xc), xc[:, :, xc.shape[2] - self.context :]


class History(nn.Module):
    """Prepends the last ``context`` rows seen to its input: ``(B, C, T) -> (B, C, context + T)``.

    Row ``j`` of the output is input row ``t0 - context + j``. Slicing the first ``T`` rows
    delays the input by ``context`` frames; sliding windows over it give per-frame taps.
    """

    def __init__(self, channels: int, context: int):
        super().__init__()
        if context < 0:
            raise ValueError(f"context must be >= 0 frames, got {context}")
        self.channels = channels
        self.context = context

    def state_shape(self, batch: int, width: int) -> tuple[int, ...]:
        return (batch, self.channels, self.context) if width == 0 else (batch, self.channels, self.context, width)

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = torch.cat([previous, x], dim=2)
        return xc, xc[:, :, xc.shape[2] - self.context :]
