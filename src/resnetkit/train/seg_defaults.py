"""Segmentation defaults derived from the data and the backbone.

A segmentation config leaves a value None ("auto") unless the user sets it. Before training,
`resolve_auto(cfg, summary)` fills every auto value from a quick look at the data (resnetkit.data.
segmentation.summarize: image sizes, class count, class pixel frequencies) and the backbone (the output
strides it reaches, CIFAR-style or ImageNet stem). Each rule is one small function returning
(value, reason), so the start block of a run can say why it did what it did; the resolved values go into
the run's config.json, and a resumed run continues with exactly them.

The reference points are the two benchmark sets (benchmarks/segmentation_defaults.py): on shapes (64 px)
resnet20 at output stride 4 with the slim 1x1 head, crop 61, scale 0.75-1.25, batch 16, lr 0.05 and OHEM
reaches 0.80 val mIoU in about a minute of a 2-core CPU, while DeepLab's VOC recipe (resnet, output stride
16, crop 321-513, scale 0.5-2.0) predicts background there; on scenes (128 px, Fashion-MNIST items on
photographs) the same rules reach 0.48 in 15 minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import torch

from resnetkit.data.segmentation import DataSummary
from resnetkit.errors import ConfigError, DataError
from resnetkit.models import create_model, model_defaults
from resnetkit.train.config import TrainConfig, check, config_error

# At most this (median shorter side): a CIFAR-style backbone. resnet20 at output stride 4 on a 125 px crop
# costs a fifth of resnet18 at stride 8 (0.77 vs 4.0 GMACs with ASPP; 8 leaves 16 cells there), which matters on a
# CPU budget; the scenes set (128 px) sits at this edge.
SMALL_IMAGE_PX = 128
MIN_CELLS = 16  # feature cells a side the output stride should leave: ASPP's atrous taps need a grid
MIN_USABLE_CELLS = 4  # fewer a side at the finest stride: the head has nothing to segment
CROP_CAP = 321  # DeepLab's VOC training crop; larger crops cost quadratic time on a CPU
DOMINANT = 0.5  # background share of the labelled pixels above which it "dominates"


@dataclass(frozen=True)
class Backbone:
    """What the rules need to know about a backbone."""

    name: str
    imagenet_stem: bool  # 7x7 stride-2 convolution + max-pool (else a CIFAR-style 3x3 stem)
    strides: tuple[int, ...]  # output strides it reaches
    num_features: int


@dataclass(frozen=True)
class Choice:
    key: str
    value: object
    reason: str
    auto: bool  # chosen here (else the user, a config file or a saved run set it)


@lru_cache(maxsize=32)
def backbone_info(name: str) -> Backbone:
    """Probe `name` on the meta device (no memory, no time): the output strides it reaches and its width."""
    strides, features = [], 0
    for s in (4, 8, 16, 32):
        try:
            with torch.device("meta"):
                net = create_model(name, num_classes=None, global_pool=False, output_stride=s)
        except ConfigError:
            continue
        strides.append(s)
        features = net.num_features
    if not strides:
        raise ConfigError(f"model.backbone={name!r} reaches none of the output strides 4, 8, 16, 32")
    return Backbone(name, model_defaults(name)["input_size"] >= 224, tuple(strides), features)


# -- the rules -------------------------------------------------------------------------------------

def choose_backbone(s: DataSummary, weights_arch: str | None) -> tuple[str, str]:
    if weights_arch:
        return weights_arch, "the architecture of model.backbone_weights"
    if s.median_side <= SMALL_IMAGE_PX:
        return "resnet20", (f"images are {s.median_side} px (median shorter side) <= {SMALL_IMAGE_PX}: a CIFAR-style "
                            "stem keeps full resolution where an ImageNet stem would divide it by 4 at once")
    return "resnet18", (f"images are {s.median_side} px > {SMALL_IMAGE_PX}: an ImageNet stem; resnet18 rather than "
                        "resnet50, which costs 2.3x the compute on a CPU budget")


def min_image_side(b: Backbone) -> int:
    """The smallest image the backbone can segment: MIN_USABLE_CELLS cells at its finest stride."""
    return MIN_USABLE_CELLS * min(b.strides) + 1


def choose_output_stride(size: int, b: Backbone) -> tuple[int, str]:
    """The coarsest stride (cheapest) up to 16 that leaves MIN_CELLS cells over `size` pixels."""
    fit = [st for st in b.strides if st <= 16 and size // st >= MIN_CELLS]
    if fit:
        st = max(fit)
        return st, f"{size} px / {st} = {size // st} cells >= {MIN_CELLS} a side; the coarsest {b.name} reaches " \
                   f"({', '.join(map(str, b.strides))}) up to DeepLab's 16"
    st = min(b.strides)
    return st, f"the finest {b.name} reaches: {size} px leave only {size // st} cells at {st}"


def choose_crop(median_side: int, stride: int) -> tuple[int, str]:
    """The largest stride*k + 1 (the last feature on the last pixel: exact corner-aligned upsampling, as
    slim's 321 and 513) not above the images' typical size, nor CROP_CAP."""
    limit = min(median_side, CROP_CAP)
    crop = max(stride + 1, (limit - 1) // stride * stride + 1)
    return crop, f"{stride}k+1 <= min(median side {median_side}, {CROP_CAP}): never upscales a typical image"


def choose_scales(crop: int, median_side: int) -> tuple[tuple[float, float], str]:
    if crop >= 0.8 * median_side:
        return (0.75, 1.25), "the crop holds (nearly) the whole image: mild scaling, little padding"
    return (0.5, 2.0), "crops of larger images: DeepLab's VOC range"


def choose_head(b: Backbone) -> tuple[str, str]:
    """A CIFAR-style backbone at output stride 4: the slim 1x1 head. With the other settings chosen here it
    beat ASPP on both benchmark sets at a CPU budget (shapes, 4 min: 0.918 against 0.899 val mIoU; scenes,
    15 min: 0.481 against 0.428, DeepLabv3+ 0.370): at equal epochs the heads were level, and the slim head
    trains 1.2-1.5x more images per second. An ImageNet backbone at output stride 8 or 16: DeepLabv3's ASPP,
    DeepLab's measured choice there (not measured here)."""
    if not b.imagenet_stem:
        return "slim", (f"{b.name} is CIFAR-style: the slim 1x1 head beat ASPP and DeepLabv3+ on shapes and scenes "
                        "at a CPU budget (README)")
    return "aspp", f"{b.name} has an ImageNet stem: DeepLabv3's ASPP, DeepLab's choice for such backbones"


def choose_aspp(crop: int, stride: int, b: Backbone) -> tuple[dict, str]:
    """ASPP width and rates scaled to the feature map. DeepLab's 6/12/18 were set for 33x33 maps (513 px at
    stride 16); on a 16-cell map a rate of 18 reaches past the border and the branch sees only padding."""
    cells = (crop - 1) // stride + 1
    channels = min(256, max(64, b.num_features // 2))
    r = max(1, round(cells / 8))
    rates = [r, 2 * r, 3 * r]
    return {"aspp_channels": channels, "aspp_rates": rates}, \
        f"{cells}x{cells} feature map: rates r, 2r, 3r with r = cells/8 (3r ~ 3/8 of the map); width " \
        f"min(256, max(64, {b.num_features}/2))"


def choose_batch(crop: int, n_images: int, grad_accum: int = 1) -> tuple[int, str]:
    """By crop size, then no more than the training set holds, and a multiple of optim.grad_accum."""
    if crop <= SMALL_IMAGE_PX + 1:
        batch, why = 16, f"crop {crop} <= {SMALL_IMAGE_PX + 1}: 16 small crops a step (the shapes benchmark)"
    elif crop <= 400:
        batch, why = 8, f"crop {crop}: 8 a step keeps the BatchNorm statistics usable at a CPU's pace"
    else:
        batch, why = 4, f"crop {crop} > 400: 4 a step for memory"
    if n_images < batch:
        batch, why = n_images, f"{why}; cut to the {n_images} training images"
    return max(grad_accum, batch // grad_accum * grad_accum), why


def choose_lr(batch: int, pretrained: bool) -> tuple[float, str]:
    """Linear in the batch size (Goyal et al. 2017) from 0.05 at 16 from scratch (the shapes benchmark) or
    DeepLab's 0.007 at 16 when fine-tuning a pretrained backbone."""
    base = 0.007 if pretrained else 0.05
    lr = round(base * batch / 16, 6)
    return lr, f"{base} x batch {batch} / 16 ({'fine-tuning a pretrained backbone' if pretrained else 'from scratch'})"


def choose_loss(s: DataSummary) -> tuple[str, str]:
    """OHEM when the background (class 0) dominates: on shapes (80% background) at equal steps it reached
    0.80 val mIoU where class-weighted CE reached 0.72 and plain CE 0.61 (README, benchmarks/
    segmentation_defaults.py); plain CE otherwise, where nothing was measured against it."""
    bg = s.class_freq[0] if s.class_freq else 0.0
    if bg > DOMINANT:
        return "ohem", (f"background is {bg:.0%} of the pixels (> {DOMINANT:.0%}): OHEM, which beat class weights "
                        "and plain CE on shapes (README)")
    return "ce", f"background is {bg:.0%} of the pixels (<= {DOMINANT:.0%}): plain cross-entropy"


# -- putting them together -------------------------------------------------------------------------

def check_image_sizes(s: DataSummary, b: Backbone, backbone_key_auto: bool) -> None:
    """Refuse a set whose typical image is too small for the backbone (one line: the data and the fix)."""
    need = min_image_side(b)
    if s.median_side < need:
        fix = "upscale the images" + ("" if backbone_key_auto else " or choose a CIFAR-style backbone (resnet20)")
        raise config_error(f"data.path={s.root}: the images are {s.median_side} px (median shorter side; smallest "
                           f"{s.smallest}, {s.min_side} px), smaller than the {need} px {b.name} needs "
                           f"({MIN_USABLE_CELLS} feature cells at output stride {min(b.strides)}); {fix}",
                           ("data.path",), cls=DataError)


def resolve_auto(cfg: TrainConfig, s: DataSummary, weights_arch: str | None = None
                 ) -> tuple[TrainConfig, list[Choice]]:
    """`cfg` with every auto (None) segmentation value chosen from the data summary `s` and the backbone,
    and the list of choices (each value, why, and whether it was chosen here) for the start block.
    `weights_arch`: the architecture of model.backbone_weights, when given."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    choices: list[Choice] = []

    def pick(key: str, current, rule):
        if current is not None:
            choices.append(Choice(key, current, "set", False))
            return current
        value, why = rule()
        choices.append(Choice(key, value, why, True))
        return value

    backbone = pick("model.backbone", m.backbone, lambda: choose_backbone(s, weights_arch))
    b = backbone_info(backbone)
    check_image_sizes(s, b, m.backbone is None)
    stride = pick("model.output_stride", m.output_stride,
                  lambda: choose_output_stride(d.crop_size or min(s.median_side, CROP_CAP), b))
    crop = pick("data.crop_size", d.crop_size, lambda: choose_crop(s.median_side, stride))
    scales = (d.min_scale, d.max_scale)
    if None in scales:
        auto, why = choose_scales(crop, s.median_side)
        scales = tuple(a if v is None else v for a, v in zip(auto, scales))
        choices.append(Choice("data.min_scale/max_scale", f"{scales[0]}-{scales[1]}", why, True))
    else:
        choices.append(Choice("data.min_scale/max_scale", f"{scales[0]}-{scales[1]}", "set", False))
    head = pick("model.head", m.head, lambda: choose_head(b))
    kwargs = dict(m.kwargs)
    if head in ("aspp", "deeplabv3plus") and not {"aspp_channels", "aspp_rates"} & set(kwargs):
        aspp, why = choose_aspp(crop, stride, b)
        kwargs.update(aspp)
        choices.append(Choice("model.kwargs", aspp, why, True))
    elif kwargs:
        choices.append(Choice("model.kwargs", kwargs, "set", False))
    batch = pick("data.batch_size", d.batch_size, lambda: choose_batch(crop, s.n_images, o.grad_accum))
    if o.lr is None and o.lr_per_256 > 0:  # the linear scaling rule the user asked for, on the chosen batch
        lr = o.lr_per_256 * batch / 256
        choices.append(Choice("optim.lr", lr, f"set: optim.lr_per_256={o.lr_per_256} x batch {batch} / 256", False))
    else:
        lr = pick("optim.lr", o.lr, lambda: choose_lr(batch, bool(m.backbone_weights)))
    loss = pick("model.loss", m.loss, lambda: choose_loss(s))
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(m, backbone=backbone, output_stride=stride, head=head, kwargs=kwargs, loss=loss),
        data=dataclasses.replace(d, crop_size=crop, min_scale=scales[0], max_scale=scales[1], batch_size=batch),
        optim=dataclasses.replace(o, lr=lr))
    check(cfg)
    return cfg, choices


def format_choices(choices: list[Choice], s: DataSummary) -> str:
    """The start block: one line per value, why, and who set it."""
    share = ", ".join(f"{f:.1%}" for f in s.class_freq)
    lines = [f"segmentation settings for {s.root}: {s.n_images} training images, median shorter side "
             f"{s.median_side} px (smallest {s.min_side}), {s.num_classes} classes, pixel shares {share}"]
    width = max(len(c.key) for c in choices)
    for c in choices:
        lines.append(f"  {c.key:<{width}} = {c.value}  " + (f"(auto: {c.reason})" if c.auto else "(set)"))
    return "\n".join(lines)
