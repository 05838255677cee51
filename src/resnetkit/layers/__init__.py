"""Layers with TensorFlow's padding semantics, so that slim-trained weights give slim's outputs, and the
pieces of the residual family's variants (weight standardisation, GroupNorm, SE, drop-path, avg-down)."""

from resnetkit.layers.drop import DropPath, drop_path
from resnetkit.layers.norm import GN_GROUPS, NORMS, norm2d
from resnetkit.layers.padding import (
    Conv2dSame,
    MaxPool2dSame,
    SymbolicMaxPool2dSame,
    conv2d_same,
    fixed_padding,
    max_pool2d_same,
    same_padding,
    subsample,
)
from resnetkit.layers.pool import AvgPool2x2, avg_pool2x2
from resnetkit.layers.squeeze_excite import SqueezeExcite, make_divisible
from resnetkit.layers.std_conv import WS_EPS, StdConv2dSame

__all__ = [
    "GN_GROUPS",
    "NORMS",
    "WS_EPS",
    "AvgPool2x2",
    "Conv2dSame",
    "DropPath",
    "MaxPool2dSame",
    "SqueezeExcite",
    "StdConv2dSame",
    "SymbolicMaxPool2dSame",
    "avg_pool2x2",
    "conv2d_same",
    "drop_path",
    "fixed_padding",
    "make_divisible",
    "max_pool2d_same",
    "norm2d",
    "same_padding",
    "subsample",
]
