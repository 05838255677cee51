"""The average pool of the ResNet-D shortcut (He et al. 2019, 'Bag of Tricks', fig. 2c), atrous-ready."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def avg_pool2x2(x: torch.Tensor, stride: int = 2, rate: int = 1) -> torch.Tensor:
    """2x2 average pool whose window never counts cells beyond the input (ceil mode, no padding counted).

    stride > 1: timm's `AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)`, so an odd last
    row averages itself alone. stride 1 is its atrous stand-in on a grid of spacing `rate` r (in the unit
    whose stride output_stride removed): each cell averages itself and the cells r to the right and
    below, where they exist. Sampled every 2r cells, that is the strided pool of the grid sampled every
    r cells, so a dense (output_stride) net equals the strided one on its grid.
    """
    if stride > 1:
        return F.avg_pool2d(x, 2, stride, ceil_mode=True, count_include_pad=False)
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, rate, 0, rate))  # zeros to the right and below: (N, C, H + r, W + r)
    total = xp[..., :h, :w] + xp[..., rate:, :w] + xp[..., :h, rate:] + xp[..., rate:, rate:]
    # How many real cells each window holds: 2 per axis, 1 in the last r rows / columns.
    rows = torch.full((h, 1), 2.0, device=x.device, dtype=x.dtype)
    cols = torch.full((1, w), 2.0, device=x.device, dtype=x.dtype)
    rows[max(h - rate, 0):] = 1.0
    cols[:, max(w - rate, 0):] = 1.0
    return total / (rows * cols)


class AvgPool2x2(nn.Module):
    """Module form of `avg_pool2x2` (no parameters)."""

    def __init__(self, stride: int = 2, rate: int = 1):
        super().__init__()
        self.stride, self.rate = stride, rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2x2(x, self.stride, self.rate)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, rate={self.rate}"
