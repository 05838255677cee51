"""Normalisation layers by name, so that a model's config stays plain JSON ('bn' or 'gn')."""

from __future__ import annotations

from torch import nn

NORMS = ("bn", "gn")
# Group Normalization (Wu and He 2018) as BiT uses it: 32 groups whatever the width.
GN_GROUPS = 32


def norm2d(kind: str, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """'bn': BatchNorm2d (slim's eps 1e-5); 'gn': GroupNorm with 32 groups (BiT, Kolesnikov et al. 2020),
    which keeps no running statistics, so `momentum` does not apply to it."""
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if kind == "gn":
        if channels % GN_GROUPS:
            raise ValueError(f"norm 'gn' needs channels divisible by {GN_GROUPS}, got {channels}")
        return nn.GroupNorm(GN_GROUPS, channels, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
