"""Semantic segmentation models: a registered backbone in fully convolutional mode plus a dense head,
registered like every other model: `slimseg_<backbone>` and `deeplabv3_<backbone>` for every
classification backbone (`create_model("deeplabv3_resnet_v2_101", num_classes=21, output_stride=16)`).

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

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models import variants  # noqa: F401  (the backbones are registered before the loop below)
from resnetkit.models.registry import create_model, list_models, model_defaults, register_model

# head -> the prefix of its registered names
HEADS = {"slim": "slimseg", "aspp": "deeplabv3"}
ASPP_RATES_OS16 = (6, 12, 18)


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


def _conv_bn_relu(in_chans: int, out_chans: int, k: int = 1, rate: int = 1) -> nn.Sequential:
    # Stride-1 'SAME' padding: rate * (k - 1) / 2 on every side keeps the grid aligned.
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, k, padding=rate * (k - 1) // 2, dilation=rate, bias=False),
                         nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True))


class SlimHead(nn.Module):
    """slim: logits = 1x1 conv (with bias) on the last block's features."""

    def __init__(self, in_chans: int, num_classes: int):
        super().__init__()
        self.logits = nn.Conv2d(in_chans, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average -> 1x1 conv + BN + ReLU -> broadcast back to (h, w).

    Note: BN here sees one value per channel and image, so training needs batches of 2 or more.
    """

    def __init__(self, in_chans: int, chs: int):
        super().__init__()
        self.conv = _conv_bn_relu(in_chans, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3), keepdim=True))  # (N, chs, 1, 1)
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a broadcast


class ASPPHead(nn.Module):
    """DeepLabv3's Atrous Spatial Pyramid Pooling head: (N, C, h, w) -> (N, num_classes, h, w)."""

    def __init__(self, in_chans: int, num_classes: int, rates: tuple[int, ...] = ASPP_RATES_OS16,
                 channels: int = 256, image_pooling: bool = True):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList([_conv_bn_relu(in_chans, channels, 1)] +
                                      [_conv_bn_relu(in_chans, channels, 3, r) for r in self.rates])
        self.image_pool = ImagePooling(in_chans, channels) if image_pooling else None
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
            raise ConfigError(f"head {head!r}: choose one of {', '.join(HEADS)}")
        self.backbone, self.num_classes, self.head_name = backbone, num_classes, head
        self.in_chans, self.global_pool = backbone.in_chans, False  # fully convolutional
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

    def forward_end_points(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at input size, the backbone's end points plus 'head/logits' (low resolution) and 'logits')."""
        feats, ep = self.backbone.forward_end_points(x)  # (N, C, H/s, W/s)
        low = self.forward_head(feats)
        out = upsample_logits(low, x.shape[-2:], self.output_stride)
        return out, {**ep, "head/logits": low, "logits": out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(x)[0]


def segmentation_model(backbone: str, head: str, num_classes: int = 21, output_stride: int = 16, in_chans: int = 3,
                       aspp_channels: int = 256, aspp_rates: list[int] | None = None, image_pooling: bool = True,
                       backbone_kwargs: dict | None = None) -> SegModel:
    """`backbone` (any registered classification name) with num_classes=None, global_pool=False at
    `output_stride`, and a `head` on it. The registered `slimseg_*` / `deeplabv3_*` builders call this."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    net = create_model(backbone, num_classes=None, global_pool=False, output_stride=output_stride,
                       in_chans=in_chans, **(backbone_kwargs or {}))
    return SegModel(net, num_classes, head, aspp_channels, aspp_rates, image_pooling)


def segmentation_name(head: str, backbone: str) -> str:
    """The registered name of `head` on `backbone`: ('aspp', 'resnet50') -> 'deeplabv3_resnet50'."""
    if head not in HEADS:
        raise ConfigError(f"head {head!r}: choose one of {', '.join(HEADS)}")
    return f"{HEADS[head]}_{backbone}"


def _register_segmentation() -> None:
    for backbone in list_models(task="classification"):
        d = model_defaults(backbone)
        # Slim's aligned sizes (32k+1): 513 for ImageNet backbones, 33 for CIFAR ones; DeepLab's output
        # stride 16 where the backbone reaches it (CIFAR backbones stride by 4 in all).
        imagenet = d["input_size"] >= 224
        size, default_os = (513, 16) if imagenet else (d["input_size"] + 1, 4)

        def slim(_b=backbone, num_classes: int = 21, output_stride: int = default_os, in_chans: int = 3,
                 backbone_kwargs: dict | None = None) -> SegModel:
            return segmentation_model(_b, "slim", num_classes, output_stride, in_chans,
                                      backbone_kwargs=backbone_kwargs)

        def aspp(_b=backbone, num_classes: int = 21, output_stride: int = default_os, in_chans: int = 3,
                 aspp_channels: int = 256, aspp_rates: list[int] | None = None, image_pooling: bool = True,
                 backbone_kwargs: dict | None = None) -> SegModel:
            return segmentation_model(_b, "aspp", num_classes, output_stride, in_chans, aspp_channels, aspp_rates,
                                      image_pooling, backbone_kwargs)

        for head, fn in (("slim", slim), ("aspp", aspp)):
            fn.__doc__ = f"{backbone} at output stride 8 or 16 with the {head} head ({HEADS[head]})."
            register_model(fn, name=segmentation_name(head, backbone), input_size=size, num_classes=21,
                           family=d["family"], task="segmentation")


_register_segmentation()
