"""What a weights file says about itself: one frozen `ModelCard` (architecture config, class names,
preprocessing, source, metrics), stored in every file and exposed as `model.card` on every loaded model.

`Preprocessing` has the same fields for every task and becomes a torchvision transform in one place
(`Preprocessing.transform()`), so that predict, eval, segment and export all feed a model what it
was trained on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from resnetkit._helpers import open_image, to_mode
from resnetkit.errors import CheckpointError
from resnetkit.models import ModelConfig, model_defaults

CHANNEL_ORDERS = ("RGB", "BGR", "L")  # L: one grey channel
MAX_CLASS_NAME = 200  # characters (ImageNet's longest class name has 30)
MAX_SIDE = 16384  # pixels: a larger input size in a file is a mistake or an attack, not a model
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                  "nearest": T.InterpolationMode.NEAREST}


def _floats(value, key: str) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise CheckpointError(f"preprocessing.{key} must be a non-empty list of numbers, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise CheckpointError(f"preprocessing.{key} must be a list of numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise CheckpointError(f"preprocessing.{key} holds a non-finite number: {value!r}")
    return out


def _positive_int(value, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or \
            int(value) != value or not 1 <= value <= MAX_SIDE:
        raise CheckpointError(f"preprocessing.{key} must be a positive integer up to {MAX_SIDE}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input, in this order:

    1. decode to `channel_order` (RGB, BGR, or L for one grey channel);
    2. `crop_fraction`: keep that central fraction, then resize to `size` (Inception); or `resize` the
       shorter side, then center-crop `crop` (torchvision, VGG) and resize to `size` if that differs;
       or resize straight to `size`; with `size` None (fully convolutional models) keep the image size;
    3. x = (pixels / 255 - mean) / std per channel.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    resize: int | None = None
    crop: int | None = None
    crop_fraction: float | None = None
    name: str = ""  # the preset's name ('torchvision', 'inception', ...), or ''

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise CheckpointError(f"preprocessing.channel_order {self.channel_order!r}: one of {CHANNEL_ORDERS}")
        if self.interpolation not in INTERPOLATIONS:
            raise CheckpointError(f"preprocessing.interpolation {self.interpolation!r}: one of "
                                  f"{', '.join(INTERPOLATIONS)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise CheckpointError(f"preprocessing: mean {list(self.mean)} and std {list(self.std)} need "
                                  f"{self.channels} values for {self.channel_order}")
        if any(s <= 0 for s in self.std):
            raise CheckpointError(f"preprocessing.std must be positive, got {list(self.std)}")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise CheckpointError(f"preprocessing.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.size is None and (self.resize or self.crop or self.crop_fraction):
            raise CheckpointError("preprocessing: resize, crop and crop_fraction need a size")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size) if self.size is not None else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Read (and check) a stored dict; the layout-1 keys (`grayscale`, segmentation's `task`,
        `crop_size`, `output_stride`, `ignore_label`) are understood too."""
        if not isinstance(d, dict):
            raise CheckpointError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        if d.pop("grayscale", False):
            d["channel_order"] = "L"
        for legacy in ("task", "crop_size", "output_stride", "ignore_label"):
            d.pop(legacy, None)
        unknown = d.keys() - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CheckpointError(f"preprocessing has unknown keys {sorted(unknown)}")
        size = d.get("size")
        if size is not None:
            if not isinstance(size, Sequence) or len(size) != 2:
                raise CheckpointError(f"preprocessing.size must be [H, W], got {size!r}")
            d["size"] = (_positive_int(size[0], "size"), _positive_int(size[1], "size"))
        for key in ("mean", "std"):
            if key in d:
                d[key] = _floats(d[key], key)
        for key in ("resize", "crop"):
            d[key] = _positive_int(d.get(key), key)
        if d.get("crop_fraction") is not None:
            d["crop_fraction"] = _floats([d["crop_fraction"]], "crop_fraction")[0]
        for key in ("channel_order", "interpolation", "name"):
            if key in d and not isinstance(d[key], str):
                raise CheckpointError(f"preprocessing.{key} must be a string, got {d[key]!r}")
        return cls(**d)

    def transform(self) -> T.Compose:
        """A torchvision transform: PIL image -> float32 (C, H, W) tensor as the weights expect it."""
        interp = INTERPOLATIONS[self.interpolation]
        steps: list = [_ToMode(self.channel_order)]
        if self.size is not None:
            h, w = self.size
            if self.crop_fraction:
                steps += [_CenterFraction(self.crop_fraction), T.Resize((h, w), interp)]
            elif self.resize:
                c = self.crop or self.resize
                steps += [T.Resize(self.resize, interp), T.CenterCrop(c)]
                if (c, c) != (h, w):
                    steps.append(T.Resize((h, w), interp))
            else:
                steps.append(T.Resize((h, w), interp))
        steps += [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def __call__(self, image: Image.Image | str) -> torch.Tensor:
        """Shorthand for `self.transform()(image)`; a path is opened first (DataError when unreadable)."""
        im = image if isinstance(image, Image.Image) else open_image(image, "L" if self.channel_order == "L" else "RGB")
        return self.transform()(im)


class _ToMode(torch.nn.Module):
    """PIL image -> RGB or L; BGR is RGB with the channels reversed (Caffe-style weights)."""

    def __init__(self, order: str):
        super().__init__()
        self.order = order

    def forward(self, im: Image.Image) -> Image.Image:
        im = to_mode(im, "L" if self.order == "L" else "RGB")
        if self.order == "BGR":
            r, g, b = im.split()
            im = Image.merge("RGB", (b, g, r))
        return im


class _CenterFraction(torch.nn.Module):
    """Keep the central `fraction` of each side (slim's inception_preprocessing `central_crop`)."""

    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def forward(self, im: Image.Image) -> Image.Image:
        h, w = max(1, int(im.height * self.fraction)), max(1, int(im.width * self.fraction))
        return TF.center_crop(im, [h, w])


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything a weights file says about its model. `config.build()` makes the architecture again."""

    config: ModelConfig
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    source: str = ""  # where the weights came from: a run directory, a converted checkpoint
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # measured: {"val_miou": 0.8, ...}
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # the training config, the command, ...

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def task(self) -> str:
        return model_defaults(self.config.arch)["task"]

    def replace(self, **changes) -> ModelCard:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(),
                "class_names": list(self.class_names) if self.class_names is not None else None,
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing is not None else None,
                "source": self.source, "metrics": dict(self.metrics), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        if not isinstance(d, dict):
            raise CheckpointError(f"the model card must be a JSON object, got {type(d).__name__}")
        cfg = d.get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("arch"), str) or \
                not isinstance(cfg.get("kwargs", {}), dict):
            raise CheckpointError(f"the model card's config must be {{'arch': NAME, 'kwargs': {{...}}}}, got {cfg!r}")
        names = d.get("class_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise CheckpointError("class_names must be a list of strings")
        for n in names or ():
            # Names reach terminals and file names: no control characters (escape sequences), bounded length.
            if not n.isprintable() or not 0 < len(n) <= MAX_CLASS_NAME:
                raise CheckpointError(f"class name {n[:40]!r} is empty, longer than {MAX_CLASS_NAME} characters or "
                                      "holds control characters")
        pre = d.get("preprocessing")
        for key in ("metrics", "extra"):
            if not isinstance(d.get(key) or {}, dict):
                raise CheckpointError(f"the model card's {key} must be a JSON object")
        return cls(config=ModelConfig.from_dict(cfg), class_names=tuple(names) if names is not None else None,
                   preprocessing=Preprocessing.from_dict(pre) if pre is not None else None,
                   source=str(d.get("source") or ""), metrics=dict(d.get("metrics") or {}),
                   extra=dict(d.get("extra") or {}))


def input_shape(model: torch.nn.Module, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of `model`'s input: `size` if given, else its card's preprocessing size, else the
    registry's default input size for its architecture (224 for a model built outside the registry)."""
    if size is None:
        card, config = getattr(model, "card", None), getattr(model, "config", None)
        if card is not None and card.preprocessing is not None and card.preprocessing.size is not None:
            size = card.preprocessing.size
        else:
            s = model_defaults(config.arch)["input_size"] if config is not None else 224
            size = (s, s)
    return (getattr(model, "in_chans", 3), *size)
