"""Squeeze-and-excitation (Hu et al. 2018): reweight channels by a gate computed from their global means."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round `v` to the nearest multiple of `divisor` (at least `divisor`): timm's SE width rule
    (`make_divisible(channels * rd_ratio, 8, round_limit=0.)`), so our parameter counts equal timm's."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """(N, C, H, W) -> x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1: C -> C*ratio (rounded to 8), 1x1
    convs with biases. Names `fc1` / `fc2` are timm's (`se.fc1.weight`), so its state dicts map one to one."""

    def __init__(self, channels: int, ratio: float = 1 / 16, divisor: int = 8):
        super().__init__()
        reduced = make_divisible(channels * ratio, divisor)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1): the squeeze
        s = self.fc2(torch.relu(self.fc1(s)))  # (N, C, 1, 1): the excitation
        return x * torch.sigmoid(s)
