"""Semantic segmentation: a registered backbone in fully convolutional mode plus a dense head.

Two heads:
  slim  TF-slim's own recipe (resnet_v1.py docstring): a 1x1 logits conv on the last block at output
        stride 8 or 16, upsampled bilinearly to the input.
  aspp  DeepLabv3 (Chen et al. 2017, sec. 3.3): a 1x1 branch, three 3x3 atrous branches (rates 6/12/18
        at output stride 16, doubled at 8), image-level pooling, each BN+ReLU; concatenated, a 1x1
        projection with BN+ReLU, then the 1x1 classifier.

Slim's alignment: with 'SAME'-style convolutions, feature (i, j) sits over pixel (i*s, j*s) for output
stride s. An input of size s*k + 1 (321 at s=8 -> 41, 513 at s=16 -> 33) puts the last feature on the
last pixel, so `align_corners=True` upsampling is exact; other sizes use the same pixel <-> feature map and
hold the border value past the last feature (see `upsample_logits`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import UserError
from resnetkit.models import ModelConfig, create_model

ARCH = "segmentation"  # the `arch` of every segmentation model's config (weights/io.py dispatches on it)
HEADS = ("slim", "aspp")
ASPP_RATES_OS16 = (6, 12, 18)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig(ModelConfig):
    """A ModelConfig whose `build()` makes a segmentation model (arch 'segmentation', kwargs for
    `create_segmentation_model`); it serialises exactly like any other model's config."""

    def build(self) -> nn.Module:
        return create_segmentation_model(**self.kwargs)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(N, K, h, w) logits at output stride `stride` -> (N, K, H, W), pixel y sampling feature y / stride.

    For H = stride*(h-1) + 1 this is exactly bilinear with align_corners=True (slim / DeepLab). For other
    sizes the corner-aligned map is kept: resize to stride*(h-1)+1, then crop, or hold the border value.
    """
    h, w = logits.shape[-2:]
    H, W = size
    full = (stride * (h - 1) + 1, stride * (w - 1) + 1)
    if full == (H, W):
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=True)
    if h == 1 and w == 1:
        return logits.expand(*logits.shape[:2], H, W)
    x = F.interpolate(logits, size=full, mode="bilinear", align_corners=True)
    x = x[..., :H, :W]
    pad_h, pad_w = H - x.shape[-2], W - x.shape[-1]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def _conv_bn_relu(cin: int, cout: int, k: int = 1, rate: int = 1) -> nn.Sequential:
    # Stride-1 'SAME' padding: rate * (k - 1) / 2 on every side keeps the grid aligned.
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=rate * (k - 1) // 2, dilation=rate, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SlimHead(nn.Module):
    """slim: logits = 1x1 conv (with bias) on the last block's features."""

    def __init__(self, in_chs: int, num_classes: int):
        super().__init__()
        self.logits = nn.Conv2d(in_chs, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average -> 1x1 conv + BN + ReLU -> broadcast back to (h, w).

    Note: BN here sees one value per channel and image, so training needs batches of 2 or more.
    """

    def __init__(self, in_chs: int, chs: int):
        super().__init__()
        self.conv = _conv_bn_relu(in_chs, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3), keepdim=True))  # (N, chs, 1, 1)
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a broadcast


class ASPPHead(nn.Module):
    """DeepLabv3's Atrous Spatial Pyramid Pooling head: (N, C, h, w) -> (N, num_classes, h, w)."""

    def __init__(self, in_chs: int, num_classes: int, rates: tuple[int, ...] = ASPP_RATES_OS16,
                 channels: int = 256, image_pooling: bool = True):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList([_conv_bn_relu(in_chs, channels, 1)] +
                                      [_conv_bn_relu(in_chs, channels, 3, r) for r in self.rates])
        self.image_pool = ImagePooling(in_chs, channels) if image_pooling else None
        n = len(self.branches) + (1 if image_pooling else 0)
        self.project = _conv_bn_relu(n * channels, channels, 1)
        self.logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]  # each (N, channels, h, w)
        if self.image_pool is not None:
            outs.append(self.image_pool(x))
        return self.logits(self.project(torch.cat(outs, 1)))


class SegModel(nn.Module):
    """backbone (fully convolutional, output stride 8 or 16) + head; forward gives per-pixel logits.

    `forward(x)`: (N, C_in, H, W) -> (N, K, H, W); `forward_features`: (N, C, H/s, W/s);
    `forward_head`: features -> (N, K, H/s, W/s); `forward_dict` adds named intermediate outputs.
    `freeze_bn = True` keeps the backbone's BatchNorm layers in eval mode (running statistics frozen)
    even under `.train()`, the usual choice when fine-tuning with small batches (DeepLab trains BN only
    at batch >= 12).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "slim", aspp_channels: int = 256,
                 aspp_rates: tuple[int, ...] | None = None, image_pooling: bool = True):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.backbone, self.num_classes, self.head_name = backbone, num_classes, head
        self.output_stride = getattr(backbone, "output_stride", None) or 32
        if head == "slim":
            self.head = SlimHead(backbone.num_features, num_classes)
        else:
            rates = tuple(aspp_rates) if aspp_rates else tuple(r * 16 // self.output_stride for r in ASPP_RATES_OS16)
            self.head = ASPPHead(backbone.num_features, num_classes, rates, aspp_channels, image_pooling)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d) and m is not self.head.logits:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.freeze_bn = False

    def train(self, mode: bool = True) -> SegModel:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)  # (N, C, H/s, W/s)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)  # (N, K, H/s, W/s)

    def forward_dict(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at input size, {"features", "logits_lowres"})."""
        feats = self.forward_features(x)
        low = self.forward_head(feats)
        return upsample_logits(low, x.shape[-2:], self.output_stride), {"features": feats, "logits_lowres": low}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(x)[0]


def create_segmentation_model(backbone: str = "resnet18", num_classes: int = 21, head: str = "slim",
                              output_stride: int = 16, in_chans: int = 3, aspp_channels: int = 256,
                              aspp_rates: list[int] | None = None, image_pooling: bool = True,
                              backbone_kwargs: dict | None = None) -> SegModel:
    """Build `backbone` (any registered name) with num_classes=None, global_pool=False at `output_stride`
    and put a `head` on it; `model.config` rebuilds it (and is what a weights file stores)."""
    kwargs = dict(backbone=backbone, num_classes=num_classes, head=head, output_stride=output_stride,
                  in_chans=in_chans, aspp_channels=aspp_channels,
                  aspp_rates=list(aspp_rates) if aspp_rates else None, image_pooling=image_pooling,
                  backbone_kwargs=dict(backbone_kwargs or {}))
    if head not in HEADS:
        raise UserError(f"--head {head}: choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    net = create_model(backbone, num_classes=None, global_pool=False, output_stride=output_stride,
                       in_chans=in_chans, **(backbone_kwargs or {}))
    model = SegModel(net, num_classes, head, aspp_channels, aspp_rates, image_pooling)
    model.config = SegmentationConfig(ARCH, kwargs)
    return model


def load_backbone_weights(model: SegModel, path: str | os.PathLike) -> list[str]:
    """Copy a classification weights file (ours) into `model.backbone`, dropping its logits.

    Every other tensor must exist in the backbone with the same shape, and every backbone tensor must be
    in the file; a UserError names the mismatches. Returns the dropped keys.
    """
    from safetensors.torch import load_file

    from resnetkit.weights.io import read_metadata

    path = Path(path)
    meta = read_metadata(path)  # checks the file exists and is ours
    if (meta["config"] or {}).get("arch") == ARCH:
        raise UserError(f"{path}: a segmentation model, not a classification backbone; to continue training "
                        "it, load it with resnetkit.weights.io.load")
    state = load_file(str(path))
    dropped = sorted(k for k in state if k.startswith("logits."))
    state = {k: v for k, v in state.items() if k not in dropped}
    want = model.backbone.state_dict()
    missing, unexpected = want.keys() - state.keys(), state.keys() - want.keys()
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want.keys() & state.keys()
           if state[k].shape != want[k].shape]
    if missing or unexpected or bad:
        arch = (meta["config"] or {}).get("arch", "?")
        parts = ([f"missing {sorted(missing)[:3]}"] if missing else []) + (
            [f"unexpected {sorted(unexpected)[:3]}"] if unexpected else []) + ([f"shapes {bad[:3]}"] if bad else [])
        raise UserError(f"{path}: holds {arch}, which does not fit this backbone: " + "; ".join(parts))
    model.backbone.load_state_dict(state)
    return dropped
