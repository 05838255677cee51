"""Inference preparation: fold batch norms into the convolutions before them, channels-last, compile.

A BatchNorm in eval mode is a per-channel affine map, y = (x - mean) * gamma / sqrt(var + eps) + beta.
When it follows a convolution directly (v1's ConvBn, the v1 projection shortcut, the root conv) it
folds exactly into that convolution's weights and bias:

    W' = W * s[:, None, None, None],   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

Padding does not matter here, since the convolution pads its input and the BN acts on its output.
v2's pre-activation BN (and the post-norm) is followed by a ReLU before the next convolution, so it
cannot be folded into that convolution: it stays (PyTorch and ONNX Runtime run it as one fused
scale-and-shift).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from resnetkit.layers import StdConv2dSame
from resnetkit.models.units import ConvBn
from resnetkit.weights import input_shape

log = logging.getLogger(__name__)

# The largest |prepared - eager| / max|eager| that prepare_for_inference accepts (fp32 rounding is ~1e-6).
PARITY_RTOL = 1e-4


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (applied to `conv`'s output) into `conv` in place; the math runs in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    dtype = conv.weight.dtype
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                     device=w.device)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
    conv.weight.copy_((w * scale[:, None, None, None]).to(dtype))
    new_bias = ((b - bn.running_mean.double()) * scale + beta).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every BN that directly follows a convolution into it, in place. Returns how many were folded.

    Handles our `ConvBn` units and any `nn.Sequential` holding a Conv2d immediately followed by a
    BatchNorm2d (torchvision's downsample). The folded BN is replaced by nn.Identity.
    """
    if model.training:
        raise ValueError("fold_batch_norms needs a model in eval mode (BN must use running statistics)")
    folded = 0
    for module in list(model.modules()):
        # A weight-standardised conv normalises its weights on every call: a folded scale would be undone.
        if isinstance(module, ConvBn) and isinstance(module.bn, nn.BatchNorm2d) and \
                not isinstance(module.conv, StdConv2dSame):
            fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
            folded += 1
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, a), (name_b, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and not isinstance(a, StdConv2dSame):
                    fold_conv_bn(a, b)
                    setattr(module, name_b, nn.Identity())
                    folded += 1
    return folded


def parity_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A small random input that fits `model`: its card's input size, else min(registry size, 64)."""
    c, h, w = input_shape(model)
    if getattr(model, "card", None) is None or model.card.preprocessing is None:
        h, w = min(h, 64), min(w, 64)
    device = next(model.parameters()).device
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0)).to(device)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref|, that divided by max |ref|)."""
    diff = float((out.double() - ref.double()).abs().max())
    return diff, diff / max(float(ref.double().abs().max()), 1e-12)


@torch.no_grad()
def prepare_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                          compile: bool = False, check: bool = True,
                          example: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` ready for inference: eval mode, BNs folded, channels-last weights, compiled
    (the backends run compiled models under inductor's freezing).

    With `check`, the prepared model is compared with the unprepared one on `example` (default: a
    small random input) and a ValueError is raised when the relative error exceeds PARITY_RTOL.
    Inputs to a channels-last model should be channels-last too (the backends do this).
    """
    model.eval()
    prepared = copy.deepcopy(model)  # deepcopy keeps .config and .card
    if fold_bn:
        n = fold_batch_norms(prepared)
        log.debug("folded %d batch norms", n)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if check:
        x = parity_input(model) if example is None else example.to(next(model.parameters()).device)
        ref = model(x)
        out = prepared(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        diff, rel = relative_error(out, ref)
        log.debug("prepare_for_inference: max abs diff %.3g (relative %.3g) vs the unprepared model", diff, rel)
        if rel > PARITY_RTOL:
            raise ValueError(f"prepared model differs from the original: max abs diff {diff:.3g}, relative "
                             f"{rel:.3g} > {PARITY_RTOL}")
    if compile:
        prepared = torch.compile(prepared)
    return prepared
