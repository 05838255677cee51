"""Layers with TensorFlow's padding semantics, so that slim-trained weights give slim's outputs."""

from resnetkit.layers.padding import (
    Conv2dSame,
    MaxPool2dSame,
    conv2d_same,
    fixed_padding,
    max_pool2d_same,
    same_padding,
    subsample,
)

__all__ = [
    "Conv2dSame",
    "MaxPool2dSame",
    "conv2d_same",
    "fixed_padding",
    "max_pool2d_same",
    "same_padding",
    "subsample",
]
