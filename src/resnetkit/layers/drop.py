"""Stochastic depth (Huang et al. 2016): in training, drop a unit's whole residual branch per sample."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero each sample's `x` (N, ...) with probability `rate` and scale the kept ones by 1 / (1 - rate),
    so the expectation is unchanged and evaluation needs no rescaling."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (N, 1, 1, 1)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of `drop_path`; a unit applies it to its residual branch before adding the shortcut."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"
