"""Residual units of He et al. 2015 (v1) and 2016 (v2, pre-activation), their plain counterparts, and the
options of the family that followed them.

Every unit takes `(in_chans, depth, stride, rate, ...)` and records TF-slim-named end points when given
a dict. Parameter names follow slim's scopes (`conv1`, `conv2`, `conv3`, `shortcut`, `preact`), so a
slim variable `.../unit_1/bottleneck_v2/conv1/BatchNorm/gamma` is `...unit_1.conv1.bn.weight` here.

Shortcuts (paper, section 4.1, plus 'D'):
  'A'    parameter-free: subsample, and zero-pad the new channels.
  'B'    projection (1x1 conv) where the channel count changes, else identity (subsampled by the
         stride). This is slim's and torchvision's rule.
  'C'    projection everywhere.
  'D'    as 'B', but the stride moves out of the 1x1 projection into a 2x2 average pool before it, so
         the projection sees every input cell (ResNet-D, He et al. 2019 'Bag of Tricks', fig. 2c;
         timm's `avg_down`).
  'none' no shortcut: the plain network of the paper.

Unit options (all default off, so the papers' nets are unchanged):
  cardinality, base_width  ResNeXt's grouped 3x3 (Xie et al. 2017): the bottleneck is
         depth_bottleneck * base_width / 64 * cardinality wide, in `cardinality` groups; base_width 128
         with cardinality 1 is Wide ResNet-50-2 (Zagoruyko and Komodakis 2016, torchvision's layout).
  se_ratio   squeeze-and-excitation on the residual branch's output (Hu et al. 2018; 1/16 in SE-ResNet).
  drop_path  stochastic depth (Huang et al. 2016): the residual branch is dropped per sample in training.
  dropout    between the two 3x3 convs of a basic unit (Wide ResNets' CIFAR recipe).
  norm       'bn' or 'gn' (GroupNorm, 32 groups); weight_std standardises every conv's filters (BiT).
  v2_bias    the v2 convolutions that no normaliser follows (conv3, the projection) carry a bias, as
             slim's arg scope gives them; BiT, timm's resnetv2 and the Wide ResNets have none.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.layers import AvgPool2x2, Conv2dSame, DropPath, SqueezeExcite, StdConv2dSame, norm2d, subsample

SHORTCUTS = ("A", "B", "C", "D", "none")


def batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    """slim's resnet_arg_scope uses eps 1e-5 (and decay 0.997, i.e. momentum 0.003, for fine-tuning)."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


def conv(in_chans: int, out_chans: int, k: int, stride: int = 1, rate: int = 1, bias: bool = False,
         groups: int = 1, weight_std: bool = False) -> Conv2dSame:
    """slim's conv2d_same, weight-standardised when `weight_std` (BiT)."""
    cls = StdConv2dSame if weight_std else Conv2dSame
    return cls(in_chans, out_chans, k, stride, rate, bias, groups)


class ConvBn(nn.Module):
    """slim.conv2d with a normalizer: conv (no bias) -> BN (or GN) -> optional ReLU."""

    def __init__(self, in_chans: int, out_chans: int, k: int, stride: int = 1, rate: int = 1, relu: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, groups: int = 1, norm: str = "bn",
                 weight_std: bool = False):
        super().__init__()
        self.conv = conv(in_chans, out_chans, k, stride, rate, groups=groups, weight_std=weight_std)
        self.bn = norm2d(norm, out_chans, bn_eps, bn_momentum)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class PadChannels(nn.Module):
    """Option-A shortcut: subsample by the stride and append zero channels up to `depth`."""

    def __init__(self, in_chans: int, depth: int, stride: int):
        super().__init__()
        self.extra = depth - in_chans
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = subsample(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def _check_shortcut(shortcut: str, in_chans: int, depth: int) -> None:
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    if shortcut == "A" and depth < in_chans:
        raise ValueError(f"option-A shortcuts can only add channels ({in_chans} -> {depth})")


class _Unit(nn.Module):
    """Shared shortcut, squeeze-excitation and drop-path logic. Subclasses build the residual layers and
    implement `_residual`."""

    scope_name = "unit"
    preact = False

    def __init__(self, kind: str, preact: bool, in_chans: int, depth: int, stride: int, shortcut: str,
                 bn_eps: float, bn_momentum: float, rate: int = 1, output_rate: int | None = None, norm: str = "bn",
                 weight_std: bool = False, v2_bias: bool = True, se_ratio: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.preact = preact
        self.scope_name = f"{kind}_v{2 if preact else 1}"  # slim's scope: bottleneck_v2, basic_v1, ...
        # What every conv + normaliser of the residual branch is built with.
        self.norm_kw = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, norm=norm, weight_std=weight_std)
        _check_shortcut(shortcut, in_chans, depth)
        self.in_chans, self.out_channels, self.stride = in_chans, depth, stride
        self.has_shortcut = shortcut != "none"
        if drop_path and not self.has_shortcut:
            raise ValueError("drop_path drops residual branches; a plain unit (shortcut 'none') has none")
        project = shortcut == "C" or (shortcut in ("B", "D") and depth != in_chans)
        # 'D': a 2x2 average pool takes the stride. When output_stride removed this unit's stride
        # (output_rate > rate), the pool's atrous form keeps the dense output equal to the strided one.
        self.shortcut_pool = None
        if shortcut == "D" and (stride > 1 or (output_rate or rate) != rate):
            self.shortcut_pool = AvgPool2x2(stride, rate)
        proj_stride = 1 if self.shortcut_pool is not None else stride
        if project and self.preact:
            # v2: the projection reads the pre-activated input; no normaliser follows it.
            self.shortcut = conv(in_chans, depth, 1, proj_stride, bias=v2_bias, weight_std=weight_std)
        elif project:
            self.shortcut = ConvBn(in_chans, depth, 1, proj_stride, relu=False, bn_eps=bn_eps,
                                   bn_momentum=bn_momentum, norm=norm, weight_std=weight_std)
        elif shortcut == "A" and depth != in_chans:
            self.shortcut = PadChannels(in_chans, depth, stride)
        else:
            self.shortcut = None  # identity, subsampled by the stride ('D': average-pooled)
        self.projects = project
        if self.preact:
            self.preact_bn = norm2d(norm, in_chans, bn_eps, bn_momentum)
        self.se = SqueezeExcite(depth, se_ratio) if se_ratio else None
        self.drop_path = DropPath(drop_path) if drop_path else None

    def forward(self, x: torch.Tensor, end_points: dict | None = None, prefix: str = "") -> torch.Tensor:
        name = f"{prefix}{self.scope_name}"
        inp = x
        if self.preact:
            x = F.relu(self.preact_bn(x))
        if self.has_shortcut:
            if self.projects:
                # slim's v2 projects the pre-activation; its identity path keeps the raw input.
                short = self.shortcut(x if self.shortcut_pool is None else self.shortcut_pool(x))
                if end_points is not None:
                    end_points[f"{name}/shortcut"] = short
            elif self.shortcut is not None:
                short = self.shortcut(inp)
            elif self.shortcut_pool is not None:
                short = self.shortcut_pool(inp)
            else:
                short = subsample(inp, self.stride)
        out = self._residual(x, end_points, name)
        if self.se is not None:
            out = self.se(out)  # (N, depth, h, w), channels reweighted
            if end_points is not None:
                end_points[f"{name}/se"] = out
        if self.drop_path is not None:
            out = self.drop_path(out)
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
    """1x1 (reduce) -> 3x3 (stride, rate, groups) -> 1x1 (expand). The stride sits in the 3x3, as in slim
    and torchvision (the 2015 Caffe models strided the first 1x1).

    The 3x3 is `depth_bottleneck * base_width // 64 * cardinality` wide: depth_bottleneck with the
    defaults, 2x for Wide ResNet-50-2 (base_width 128), 32 groups of 4 per 64 for ResNeXt-50 32x4d."""

    def __init__(self, in_chans: int, depth: int, depth_bottleneck: int, stride: int = 1, rate: int = 1,
                 shortcut: str = "B", preact: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 output_rate: int | None = None, cardinality: int = 1, base_width: int = 64,
                 se_ratio: float = 0.0, drop_path: float = 0.0, norm: str = "bn", weight_std: bool = False,
                 v2_bias: bool = True):
        super().__init__("bottleneck", preact, in_chans, depth, stride, shortcut, bn_eps, bn_momentum, rate,
                         output_rate, norm, weight_std, v2_bias, se_ratio, drop_path)
        width = depth_bottleneck * base_width // 64 * cardinality  # torchvision's and timm's rule
        bn = self.norm_kw
        self.conv1 = ConvBn(in_chans, width, 1, **bn)
        self.conv2 = ConvBn(width, width, 3, stride, rate, groups=cardinality, **bn)
        if preact:
            self.conv3 = conv(width, depth, 1, bias=v2_bias, weight_std=weight_std)
        else:
            self.conv3 = ConvBn(width, depth, 1, relu=False, **bn)

    def _residual(self, x, end_points, name):
        return self._run([("conv1", self.conv1), ("conv2", self.conv2), ("conv3", self.conv3)],
                         x, end_points, name)

    def last_layer(self) -> nn.Module:
        return self.conv3


class Basic(_Unit):
    """Two 3x3 convolutions. Under atrous conversion the second conv dilates by `output_rate`, the rate
    in force after this unit's (removed) stride, so dense outputs match the strided ones. `dropout`
    sits between them (after conv1's BN and ReLU), as in the Wide ResNets."""

    def __init__(self, in_chans: int, depth: int, stride: int = 1, rate: int = 1, shortcut: str = "B",
                 preact: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 output_rate: int | None = None, depth_bottleneck: int | None = None, dropout: float = 0.0,
                 se_ratio: float = 0.0, drop_path: float = 0.0, norm: str = "bn", weight_std: bool = False,
                 v2_bias: bool = True):
        super().__init__("basic", preact, in_chans, depth, stride, shortcut, bn_eps, bn_momentum, rate, output_rate,
                         norm, weight_std, v2_bias, se_ratio, drop_path)
        bn = self.norm_kw
        self.conv1 = ConvBn(in_chans, depth, 3, stride, rate, **bn)
        self.dropout = dropout
        rate2 = output_rate or rate
        if preact:
            self.conv2 = conv(depth, depth, 3, 1, rate2, bias=v2_bias, weight_std=weight_std)
        else:
            self.conv2 = ConvBn(depth, depth, 3, 1, rate2, relu=False, **bn)

    def _residual(self, x, end_points, name):
        x = self._run([("conv1", self.conv1)], x, end_points, name)
        if self.dropout:
            x = F.dropout(x, self.dropout, self.training)
        return self._run([("conv2", self.conv2)], x, end_points, name)

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
