"""Residual units of He et al. 2015 (v1) and 2016 (v2, pre-activation), and their plain counterparts.

Every unit takes `(in_depth, depth, stride, rate, ...)` and records TF-slim-named end points when given
a dict. Parameter names follow slim's scopes (`conv1`, `conv2`, `conv3`, `shortcut`, `preact`), so a
slim variable `.../unit_1/bottleneck_v2/conv1/BatchNorm/gamma` is `...unit_1.conv1.bn.weight` here.

Shortcuts (paper, section 4.1):
  'A'    parameter-free: subsample, and zero-pad the new channels.
  'B'    projection (1x1 conv) where the channel count changes, else identity (subsampled by the
         stride). This is slim's and torchvision's rule.
  'C'    projection everywhere.
  'none' no shortcut: the plain network of the paper.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.layers import conv2d_same, subsample

SHORTCUTS = ("A", "B", "C", "none")


def batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    """slim's resnet_arg_scope uses eps 1e-5 (and decay 0.997, i.e. momentum 0.003, for fine-tuning)."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


class ConvBn(nn.Module):
    """slim.conv2d with a batch_norm normalizer: conv (no bias) -> BN -> optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, rate: int = 1, relu: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = conv2d_same(cin, cout, k, stride, rate)
        self.bn = batch_norm(cout, bn_eps, bn_momentum)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class PadChannels(nn.Module):
    """Option-A shortcut: subsample by the stride and append zero channels up to `depth`."""

    def __init__(self, depth_in: int, depth: int, stride: int):
        super().__init__()
        self.extra = depth - depth_in
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = subsample(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def _check_shortcut(shortcut: str, depth_in: int, depth: int) -> None:
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    if shortcut == "A" and depth < depth_in:
        raise ValueError(f"option-A shortcuts can only add channels ({depth_in} -> {depth})")


class _Unit(nn.Module):
    """Shared shortcut logic. Subclasses build `residual` layers and implement `_residual`."""

    scope_name = "unit"
    preact = False

    def __init__(self, in_depth: int, depth: int, stride: int, shortcut: str, bn_eps: float,
                 bn_momentum: float):
        super().__init__()
        _check_shortcut(shortcut, in_depth, depth)
        self.in_depth, self.out_channels, self.stride = in_depth, depth, stride
        self.has_shortcut = shortcut != "none"
        project = shortcut == "C" or (shortcut == "B" and depth != in_depth)
        if project and self.preact:
            # v2: the projection reads the pre-activated input and has a bias (no BN follows it).
            self.shortcut = conv2d_same(in_depth, depth, 1, stride, bias=True)
        elif project:
            self.shortcut = ConvBn(in_depth, depth, 1, stride, relu=False, bn_eps=bn_eps,
                                   bn_momentum=bn_momentum)
        elif shortcut == "A" and depth != in_depth:
            self.shortcut = PadChannels(in_depth, depth, stride)
        else:
            self.shortcut = None  # identity, subsampled by the stride
        self.projects = project
        if self.preact:
            self.preact_bn = batch_norm(in_depth, bn_eps, bn_momentum)

    def forward(self, x: torch.Tensor, end_points: dict | None = None, prefix: str = "") -> torch.Tensor:
        name = f"{prefix}{self.scope_name}"
        inp = x
        if self.preact:
            x = F.relu(self.preact_bn(x))
        if self.has_shortcut:
            if self.projects:
                # slim's v2 projects the pre-activation; its identity path keeps the raw input.
                short = self.shortcut(x)
                if end_points is not None:
                    end_points[f"{name}/shortcut"] = short
            elif self.shortcut is not None:
                short = self.shortcut(inp)
            else:
                short = subsample(inp, self.stride)
        out = self._residual(x, end_points, name)
        # In place (as torchvision) unless the end points still hold the residual branch's output.
        inplace = end_points is None
        if self.has_shortcut:
            out = out.add_(short) if inplace else out + short
        if not self.preact:
            out = F.relu(out, inplace=inplace)
        if end_points is not None:
            end_points[name] = out
        return out

    def _residual(self, x, end_points, name):
        raise NotImplementedError

    @staticmethod
    def _run(layers: list[tuple[str, nn.Module]], x, end_points, name):
        for key, layer in layers:
            x = layer(x)
            if end_points is not None:
                end_points[f"{name}/{key}"] = x
        return x


class Bottleneck(_Unit):
    """1x1 (reduce) -> 3x3 (stride, rate) -> 1x1 (expand). The stride sits in the 3x3, as in slim and
    torchvision (the 2015 Caffe models strided the first 1x1)."""

    def __init__(self, in_depth: int, depth: int, depth_bottleneck: int, stride: int = 1, rate: int = 1,
                 shortcut: str = "B", preact: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 output_rate: int | None = None):
        self.preact = preact
        self.scope_name = "bottleneck_v2" if preact else "bottleneck_v1"
        super().__init__(in_depth, depth, stride, shortcut, bn_eps, bn_momentum)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = ConvBn(in_depth, depth_bottleneck, 1, **bn)
        self.conv2 = ConvBn(depth_bottleneck, depth_bottleneck, 3, stride, rate, **bn)
        if preact:
            self.conv3 = conv2d_same(depth_bottleneck, depth, 1, bias=True)
        else:
            self.conv3 = ConvBn(depth_bottleneck, depth, 1, relu=False, **bn)

    def _residual(self, x, end_points, name):
        return self._run([("conv1", self.conv1), ("conv2", self.conv2), ("conv3", self.conv3)],
                         x, end_points, name)

    def last_layer(self) -> nn.Module:
        return self.conv3


class Basic(_Unit):
    """Two 3x3 convolutions. Under atrous conversion the second conv dilates by `output_rate`, the rate
    in force after this unit's (removed) stride, so dense outputs match the strided ones."""

    def __init__(self, in_depth: int, depth: int, stride: int = 1, rate: int = 1, shortcut: str = "B",
                 preact: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 output_rate: int | None = None, depth_bottleneck: int | None = None):
        self.preact = preact
        self.scope_name = "basic_v2" if preact else "basic_v1"
        super().__init__(in_depth, depth, stride, shortcut, bn_eps, bn_momentum)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = ConvBn(in_depth, depth, 3, stride, rate, **bn)
        rate2 = output_rate or rate
        if preact:
            self.conv2 = conv2d_same(depth, depth, 3, 1, rate2, bias=True)
        else:
            self.conv2 = ConvBn(depth, depth, 3, 1, rate2, relu=False, **bn)

    def _residual(self, x, end_points, name):
        return self._run([("conv1", self.conv1), ("conv2", self.conv2)], x, end_points, name)

    def last_layer(self) -> nn.Module:
        return self.conv2


# The unit functions that Block specs name.
bottleneck_v1 = functools.partial(Bottleneck, preact=False)
bottleneck_v2 = functools.partial(Bottleneck, preact=True)
basic_v1 = functools.partial(Basic, preact=False)
basic_v2 = functools.partial(Basic, preact=True)
plain_bottleneck_v1 = functools.partial(Bottleneck, preact=False, shortcut="none")
plain_bottleneck_v2 = functools.partial(Bottleneck, preact=True, shortcut="none")
plain_basic_v1 = functools.partial(Basic, preact=False, shortcut="none")
plain_basic_v2 = functools.partial(Basic, preact=True, shortcut="none")
