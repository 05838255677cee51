"""Semantic segmentation models: a registered backbone in fully convolutional mode plus a dense head,
registered like every other model: `slimseg_<backbone>`, `deeplabv3_<backbone>` and
`deeplabv3plus_<backbone>` for every classification backbone
(`create_model("deeplabv3_resnet_v2_101", num_classes=21, output_stride=16)`).

Three heads:
  slim  TF-slim's own recipe (resnet_v1.py docstring): a 1x1 logits conv on the last block at output
        stride 8 or 16, upsampled bilinearly to the input.
  aspp  DeepLabv3 (Chen et al. 2017, sec. 3.3): a 1x1 branch, three 3x3 atrous branches (rates 6/12/18
        at output stride 16, doubled at 8), image-level pooling, each BN+ReLU; concatenated, a 1x1
        projection with BN+ReLU, then the 1x1 classifier.
  deeplabv3plus  DeepLabv3+ (Chen et al. 2018, sec. 3.1): the ASPP features (no classifier) upsampled to
        the backbone's stride-4 features, which a 1x1 conv+BN+ReLU projects to 48 channels; concatenated,
        two 3x3 conv+BN+ReLU of `aspp_channels`, the 1x1 classifier at stride 4, upsampled to the input.
        Below output stride 8 the decoder refines by 2 as the paper's output stride 8 does (CIFAR backbones
        at output stride 4: block2, stride 2); `low_level_stride` picks another stride (1: CIFAR's block1).

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
HEADS = {"slim": "slimseg", "aspp": "deeplabv3", "deeplabv3plus": "deeplabv3plus"}
ASPP_RATES_OS16 = (6, 12, 18)
LOW_LEVEL_CHANNELS = 48  # DeepLabv3+'s projection of the low-level features (paper, sec. 4.1: 48 works best)


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
    """DeepLabv3's Atrous Spatial Pyramid Pooling head: (N, C, h, w) -> (N, num_classes, h, w).

    num_classes=None: no classifier; the projected (N, channels, h, w) features come out (DeepLabv3+).
    """

    def __init__(self, in_chans: int, num_classes: int | None, rates: tuple[int, ...] = ASPP_RATES_OS16,
                 channels: int = 256, image_pooling: bool = True):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList([_conv_bn_relu(in_chans, channels, 1)] +
                                      [_conv_bn_relu(in_chans, channels, 3, r) for r in self.rates])
        self.image_pool = ImagePooling(in_chans, channels) if image_pooling else None
        n = len(self.branches) + (1 if image_pooling else 0)
        self.project = _conv_bn_relu(n * channels, channels, 1)
        self.logits = nn.Conv2d(channels, num_classes, 1) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]  # each (N, channels, h, w)
        if self.image_pool is not None:
            outs.append(self.image_pool(x))
        y = self.project(torch.cat(outs, 1))  # (N, channels, h, w)
        return y if self.logits is None else self.logits(y)


class DecoderHead(nn.Module):
    """DeepLabv3+'s head: ASPP on the deep features, refined with the low-level features.

    `forward(feats, low)`: (N, C, h, w) at output stride s and (N, C_low, H/r, W/r) -> (N, K, H/r, W/r)
    logits; `up` = s / r says how much finer the low-level grid is.
    """

    def __init__(self, in_chans: int, low_chans: int, num_classes: int, up: int,
                 rates: tuple[int, ...] = ASPP_RATES_OS16, channels: int = 256, image_pooling: bool = True):
        super().__init__()
        self.up = up
        self.aspp = ASPPHead(in_chans, None, rates, channels, image_pooling)
        self.low_level = _conv_bn_relu(low_chans, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(channels + LOW_LEVEL_CHANNELS, channels, 3),
                                  _conv_bn_relu(channels, channels, 3))
        self.logits = nn.Conv2d(channels, num_classes, 1)

    def forward_dict(self, feats: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits on the low-level grid, the decoder's named outputs)."""
        aspp = self.aspp(feats)  # (N, channels, h, w)
        # The same corner-aligned map as the final upsampling: low-level cell p sits over deep cell p / up.
        up = upsample_logits(aspp, low.shape[-2:], self.up)  # (N, channels, H/r, W/r)
        proj = self.low_level(low)  # (N, 48, H/r, W/r)
        fused = self.fuse(torch.cat([up, proj], 1))  # (N, channels, H/r, W/r)
        return self.logits(fused), {"decoder/aspp": aspp, "decoder/aspp_upsampled": up,
                                    "decoder/low_level": proj, "decoder/fused": fused}

    def forward(self, feats: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(feats, low)[0]


def low_level_point(backbone: nn.Module, output_stride: int, stride: int | None = None) -> dict:
    """Where DeepLabv3+ takes its low-level features in `backbone` at `output_stride`.

    The deepest unit output (or root conv) at reduction `stride`, by default 4 at output stride 8 or more
    (the paper's choice at 16 and 8) and output_stride / 2 below (CIFAR nets at output stride 4: block2, at
    reduction 2); without one at that reduction, the finest below output_stride. slim's layouts stride in
    block1's last unit, so they give block1/unit_2 (DeepLab's choice for resnet_v1_50); torchvision's give
    block1. Returns dict(block, unit, reduction, num_chs, end_point): block is None for the root conv,
    end_point is its key in `forward_end_points`. Raises ConfigError when no feature is finer than
    output_stride, or none is at an explicit `stride`.
    """
    points = _unit_points(backbone)
    finer = [p for p in points if p["reduction"] < output_stride]
    if not finer:
        raise ConfigError(f"head 'deeplabv3plus' needs backbone features finer than output_stride {output_stride}; "
                          f"{backbone.scope} has none (choose output_stride {2 * output_stride} or more, or head "
                          "'aspp')")
    if stride is not None:
        at = [p for p in finer if p["reduction"] == stride]
        if not at:
            have = sorted({p["reduction"] for p in finer})
            raise ConfigError(f"low_level_stride {stride}: {backbone.scope} at output_stride {output_stride} has "
                              f"features at strides {have}; choose one of them, or None")
        return at[-1]
    target = 4 if output_stride >= 8 else max(1, output_stride // 2)
    wanted = [p for p in finer if p["reduction"] <= target]
    return wanted[-1] if wanted else finer[0]


def _unit_points(backbone: nn.Module) -> list[dict]:
    """Every place a low-level feature can come from: the root conv and each unit's output, in order."""
    s, points, r = backbone.scope, [], 1
    if backbone.conv1 is not None:
        r = backbone.feature_info[0]["reduction"]
        points.append(dict(block=None, unit=None, reduction=r, num_chs=backbone.feature_info[0]["num_chs"],
                           end_point=f"{s}/conv1"))
        r *= 2 if backbone.pool1 is not None else 1
    for bname, block in backbone.blocks.named_children():
        units = list(block.named_children())
        for i, (uname, unit) in enumerate(units):
            r *= getattr(unit, "stride", 1)
            # Its name among forward_end_points' outputs: the block's for its last unit, else the unit's scope.
            scope = f"/{unit.scope_name}" if hasattr(unit, "scope_name") else ""
            end_point = f"{s}/{bname}" if i == len(units) - 1 else f"{s}/{bname}/{uname}{scope}"
            points.append(dict(block=bname, unit=uname, reduction=r, num_chs=unit.out_channels, end_point=end_point))
    return points


class SegModel(nn.Module):
    """backbone (fully convolutional, output stride 8 or 16) + head; forward gives per-pixel logits.

    `forward(x)`: (N, C_in, H, W) -> (N, K, H, W); `forward_features`: (N, C, H/s, W/s);
    `forward_head`: features -> (N, K, H/r, W/r), r = `logits_stride` (s, or the low-level features'
    reduction for deeplabv3plus, whose forward_head also takes them); `forward_dict` adds named
    intermediate outputs. `output_stride` stays the backbone's: inputs of size s*k + 1 align every grid.
    deeplabv3plus takes its low-level features where `low_level_point(backbone, s, low_level_stride)` says.
    `freeze_bn = True` keeps the backbone's BatchNorm layers in eval mode (running statistics frozen)
    even under `.train()`, the usual choice when fine-tuning with small batches (DeepLab trains BN only
    at batch >= 12).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "slim", aspp_channels: int = 256,
                 aspp_rates: tuple[int, ...] | None = None, image_pooling: bool = True,
                 low_level_stride: int | None = None):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"head {head!r}: choose one of {', '.join(HEADS)}")
        self.backbone, self.num_classes, self.head_name = backbone, num_classes, head
        self.in_chans, self.global_pool = backbone.in_chans, False  # fully convolutional
        self.output_stride = getattr(backbone, "output_stride", None) or 32
        self.logits_stride, self.low_level = self.output_stride, None
        rates = tuple(aspp_rates) if aspp_rates else tuple(r * 16 // self.output_stride for r in ASPP_RATES_OS16)
        if head == "slim":
            self.head = SlimHead(backbone.num_features, num_classes)
        elif head == "aspp":
            self.head = ASPPHead(backbone.num_features, num_classes, rates, aspp_channels, image_pooling)
        else:
            self.low_level = low_level_point(backbone, self.output_stride, low_level_stride)
            self.logits_stride = self.low_level["reduction"]
            self.head = DecoderHead(backbone.num_features, self.low_level["num_chs"], num_classes,
                                    self.output_stride // self.logits_stride, rates, aspp_channels, image_pooling)
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's residual units in the backward pass (resnetkit.models.ResNet's)."""
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)  # (N, C, H/s, W/s)

    def _features_and_low(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over the backbone: (N, C, H/s, W/s) features and, for deeplabv3plus, the low-level
        (N, C_low, H/r, W/r) output of the unit `low_level` names (None otherwise)."""
        if self.low_level is None:
            return self.forward_features(x), None
        bb, where, low = self.backbone, (self.low_level["block"], self.low_level["unit"]), None
        if bb.conv1 is not None:
            x = bb.conv1(x)
            low = x if where == (None, None) else low
            x = bb.pool1(x) if bb.pool1 is not None else x
        for bname, block in bb.blocks.named_children():  # the walk of ResNet.forward_features, unit by unit
            for uname, unit in block.named_children():
                x = unit(x)
                low = x if where == (bname, uname) else low
        if bb.postnorm is not None:
            x = F.relu(bb.postnorm(x))
        return x, low

    def forward_head(self, feats: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        if self.low_level is None:
            return self.head(feats)  # (N, K, H/s, W/s)
        if low is None:
            raise ConfigError("head 'deeplabv3plus': forward_head needs the low-level features too "
                              f"({self.low_level['end_point']})")
        return self.head(feats, low)  # (N, K, H/r, W/r)

    def forward_dict(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at input size, {"features", "logits_lowres"} (+ "low_level" for deeplabv3plus))."""
        feats, low = self._features_and_low(x)
        lowres = self.forward_head(feats, low)
        out = upsample_logits(lowres, x.shape[-2:], self.logits_stride)
        extra = {} if low is None else {"low_level": low}
        return out, {"features": feats, "logits_lowres": lowres, **extra}

    def forward_end_points(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at input size, the backbone's end points plus 'head/logits' (low resolution) and 'logits';
        deeplabv3plus adds 'decoder/aspp', 'decoder/aspp_upsampled', 'decoder/low_level', 'decoder/fused')."""
        feats, ep = self.backbone.forward_end_points(x)  # (N, C, H/s, W/s)
        if self.low_level is None:
            low, dec = self.forward_head(feats), {}
        else:
            low, dec = self.head.forward_dict(feats, ep[self.low_level["end_point"]])
        out = upsample_logits(low, x.shape[-2:], self.logits_stride)
        return out, {**ep, **dec, "head/logits": low, "logits": out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(x)[0]


def segmentation_model(backbone: str, head: str, num_classes: int = 21, output_stride: int = 16, in_chans: int = 3,
                       aspp_channels: int = 256, aspp_rates: list[int] | None = None, image_pooling: bool = True,
                       backbone_kwargs: dict | None = None, low_level_stride: int | None = None) -> SegModel:
    """`backbone` (any registered classification name) with num_classes=None, global_pool=False at
    `output_stride`, and a `head` on it. The registered `slimseg_*` / `deeplabv3_*` / `deeplabv3plus_*`
    builders call this."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    net = create_model(backbone, num_classes=None, global_pool=False, output_stride=output_stride,
                       in_chans=in_chans, **(backbone_kwargs or {}))
    if low_level_stride is not None and head != "deeplabv3plus":
        raise ConfigError(f"low_level_stride is an option of head 'deeplabv3plus', not {head!r}")
    return SegModel(net, num_classes, head, aspp_channels, aspp_rates, image_pooling, low_level_stride)


def segmentation_name(head: str, backbone: str) -> str:
    """The registered name of `head` on `backbone`: ('aspp', 'resnet50') -> 'deeplabv3_resnet50',
    ('deeplabv3plus', 'resnet50') -> 'deeplabv3plus_resnet50'."""
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

        def plus(_b=backbone, num_classes: int = 21, output_stride: int = default_os, in_chans: int = 3,
                 aspp_channels: int = 256, aspp_rates: list[int] | None = None, image_pooling: bool = True,
                 backbone_kwargs: dict | None = None, low_level_stride: int | None = None) -> SegModel:
            return segmentation_model(_b, "deeplabv3plus", num_classes, output_stride, in_chans, aspp_channels,
                                      aspp_rates, image_pooling, backbone_kwargs, low_level_stride)

        for head, fn in (("slim", slim), ("aspp", aspp), ("deeplabv3plus", plus)):
            fn.__doc__ = f"{backbone} at output stride 8 or 16 with the {head} head ({HEADS[head]})."
            register_model(fn, name=segmentation_name(head, backbone), input_size=size, num_classes=21,
                           family=d["family"], task="segmentation")


_register_segmentation()
