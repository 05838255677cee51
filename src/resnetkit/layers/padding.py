"""TF 'SAME' arithmetic for convolutions and pooling.

TF-slim's `conv2d_same` pads a fixed amount that depends only on the kernel and the dilation rate
(never on the input size), so its output grid stays aligned with the input corners whatever the
stride. TF's own 'SAME' pooling instead pads by an amount that depends on the input size: an even
input of a stride-2 pool is padded at the bottom/right only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fixed_padding(kernel_size: int, rate: int = 1) -> tuple[int, int]:
    """(pad_beg, pad_end) of slim's `conv2d_same`: pad_total = k_eff - 1, k_eff = k + (k-1)(rate-1)."""
    k_eff = kernel_size + (kernel_size - 1) * (rate - 1)
    pad_total = k_eff - 1
    pad_beg = pad_total // 2
    return pad_beg, pad_total - pad_beg


def same_padding(size, kernel_size: int, stride: int, rate: int = 1) -> tuple:
    """(pad_beg, pad_end) that TF's padding='SAME' uses for one spatial dimension of `size`.

    Written with integer division only, so `size` may be a symbolic size (torch.export, ONNX).
    """
    k_eff = kernel_size + (kernel_size - 1) * (rate - 1)
    out = (size + stride - 1) // stride  # ceil(size / stride)
    pad_total = (out - 1) * stride + k_eff - size
    if k_eff < stride:  # only then can the window end before the input does
        pad_total = max(pad_total, 0)
    return pad_total // 2, pad_total - pad_total // 2


class Conv2dSame(nn.Conv2d):
    """slim's `conv2d_same`: stride 1 is TF 'SAME' with dilation `rate`; stride > 1 pads explicitly
    (pad_beg = (k_eff-1)//2, the rest at the end) and convolves with no padding.

    For odd effective kernels the padding is symmetric and goes into the convolution itself (as fast as
    a plain nn.Conv2d); even effective kernels pad one more cell at the end first.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 rate: int = 1, bias: bool = False, groups: int = 1):
        beg, end = fixed_padding(kernel_size, rate)
        symmetric = beg == end
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=beg if symmetric else 0, dilation=rate, groups=groups, bias=bias)
        self.rate = rate
        self._extra_pad = None if symmetric else (beg, end, beg, end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._extra_pad is not None:
            x = F.pad(x, self._extra_pad)
        return super().forward(x)


def conv2d_same(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, rate: int = 1,
                bias: bool = False, groups: int = 1) -> Conv2dSame:
    """Build slim's `conv2d_same` as a module (weights in PyTorch's OIHW layout; `groups` for ResNeXt)."""
    return Conv2dSame(in_channels, out_channels, kernel_size, stride, rate, bias, groups)


def subsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """slim's `subsample`: a 1x1 max pool with stride `factor`, i.e. every factor-th row and column.

    A 1x1 'SAME' pool never pads (ceil(n/f) outputs starting at 0), so slicing is exact.
    """
    if factor == 1:
        return x
    return x[:, :, ::factor, ::factor]


def max_pool2d_same(x: torch.Tensor, kernel_size: int = 3, stride: int = 2) -> torch.Tensor:
    """TF 'SAME' max pooling whose padded cells never win (they are -inf, not 0).

    The -inf matters for resnet_v2, whose conv1 has no ReLU, so its outputs can all be negative.
    """
    h, w = x.shape[-2:]
    pt, pb = same_padding(int(h), kernel_size, stride)
    pl, pr = same_padding(int(w), kernel_size, stride)
    if pt == pb and pl == pr:
        return F.max_pool2d(x, kernel_size, stride, padding=(pt, pl))
    if (pt, pl) == (0, 0) and pb <= kernel_size // 2 and pr <= kernel_size // 2:
        # Padding only at the end: ceil_mode lets the last window hang over the edge (ignored cells),
        # which is the same as -inf padding and saves a copy of the input.
        return F.max_pool2d(x, kernel_size, stride, ceil_mode=True)
    x = F.pad(x, (pl, pr, pt, pb), value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride)


class MaxPool2dSame(nn.Module):
    """Module form of `max_pool2d_same` (slim's `pool1`: 3x3, stride 2, padding 'SAME')."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d_same(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


class SymbolicMaxPool2dSame(nn.Module):
    """TF 'SAME' max pooling written with symbolic sizes, so that an export keeps H and W dynamic.

    `max_pool2d_same` picks its padding from Python ints (`int(h)`), which torch.export and tracing
    freeze to the example's size. Here the input is padded with -inf by k-1 on every side and then
    sliced to where TF's padding would start: the same windows, for any size.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        h, w = x.shape[-2], x.shape[-1]
        (top, bottom), (left, right) = same_padding(h, k, s), same_padding(w, k, s)
        x = F.pad(x, (k - 1, k - 1, k - 1, k - 1), value=float("-inf"))
        # The window of the TF-padded input inside the input padded by k-1 everywhere.
        y0, x0 = k - 1 - top, k - 1 - left
        return F.max_pool2d(x[:, :, y0:y0 + top + h + bottom, x0:x0 + left + w + right], k, s)
