"""Block specs in the TF-slim style: a network body is a list of `Block(scope, unit_fn, args)`.

`args` holds one dict per unit (`depth`, `depth_bottleneck` where the unit has a bottleneck, `stride`,
and any unit option that makes a variant: `cardinality` and `base_width` for ResNeXt and Wide ResNet,
`se_ratio` for SE nets, `dropout` for Wide ResNets; see `resnetkit.models.units`).
`unit_fn(in_chans, **args, rate=..., **unit_kwargs)` builds the unit as an nn.Module; the units in
`resnetkit.models.units` are the ones of the papers, and any callable with that signature will do.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from resnetkit.models import units


class Block(namedtuple("Block", ["scope", "unit_fn", "args"])):
    """A named group of residual units: `scope` names it in end points and state dicts ('block1')."""

    __slots__ = ()


def _units(depth: int, num_units: int, stride: int, stride_first: bool, **extra: Any) -> list[dict]:
    args = [dict(depth=depth, stride=1, **extra) for _ in range(num_units)]
    args[0 if stride_first else -1]["stride"] = stride
    return args


def resnet_v1_block(scope: str, base_depth: int, num_units: int, stride: int) -> Block:
    """slim's helper: bottleneck v1 units of depth 4*base_depth; the stride sits in the LAST unit."""
    return Block(scope, units.bottleneck_v1,
                 _units(base_depth * 4, num_units, stride, False, depth_bottleneck=base_depth))


def resnet_v2_block(scope: str, base_depth: int, num_units: int, stride: int) -> Block:
    """slim's helper: bottleneck v2 (pre-activation) units; the stride sits in the LAST unit."""
    return Block(scope, units.bottleneck_v2,
                 _units(base_depth * 4, num_units, stride, False, depth_bottleneck=base_depth))


def basic_v1_block(scope: str, depth: int, num_units: int, stride: int, stride_first: bool = False) -> Block:
    """Basic (two 3x3 convs) v1 units; slim's convention puts the stride last, torchvision's first."""
    return Block(scope, units.basic_v1, _units(depth, num_units, stride, stride_first))


def basic_v2_block(scope: str, depth: int, num_units: int, stride: int, stride_first: bool = False) -> Block:
    """Basic pre-activation units."""
    return Block(scope, units.basic_v2, _units(depth, num_units, stride, stride_first))


def bottleneck_block(scope: str, unit_fn, base_depth: int, num_units: int, stride: int,
                     stride_first: bool = True) -> Block:
    """Bottleneck units with any unit function; torchvision's convention (stride first) by default."""
    return Block(scope, unit_fn,
                 _units(base_depth * 4, num_units, stride, stride_first, depth_bottleneck=base_depth))
