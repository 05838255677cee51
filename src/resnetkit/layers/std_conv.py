"""Weight-standardised convolution (Qiao et al. 2019), as BiT (Kolesnikov et al. 2020) pairs it with
GroupNorm: each output filter is shifted and scaled to zero mean and unit variance before it convolves."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resnetkit.layers.padding import Conv2dSame

# BiT's value (timm's `_create_resnetv2_bit` uses the same), small next to any trained filter's variance.
WS_EPS = 1e-8


class StdConv2dSame(Conv2dSame):
    """`Conv2dSame` whose weight W (O, I/groups, k, k) is standardised per output filter on every call:
    W' = (W - mean) / sqrt(var + eps), mean and (biased) var over the I/groups * k * k values."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        # batch_norm over a (1, O, I*k*k) view normalises each filter: the same arithmetic as timm's StdConv2d.
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=self.eps)
        return w.reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._extra_pad is not None:
            x = F.pad(x, self._extra_pad)
        return self._conv_forward(x, self.standardized_weight(), self.bias)
