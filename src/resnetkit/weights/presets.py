"""The preprocessing recipes of published weights, and ImageNet's class names (plain data).

Presets (see `Preprocessing` for the order in which the fields apply):
  torchvision     shorter side 256, center crop 224, ImageNet mean/std (torchvision's ImageClassification)
  torchvision_v2  the same at resize 232 (the IMAGENET1K_V2 weights are evaluated so)
  inception       central 87.5%, resize to 299, scale to [-1, 1] (slim's inception_preprocessing, eval)
  vgg             shorter side 256, center crop 224, subtract the RGB means in 0-255 units (slim's
                  vgg_preprocessing: mean = m / 255, std = 1 / 255)
  keras_tf        resize to 224, x / 127.5 - 1 (keras.applications.resnet_v2.preprocess_input, mode 'tf')
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib import resources

from resnetkit._helpers import did_you_mean
from resnetkit.errors import ConfigError
from resnetkit.weights.card import Preprocessing

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VGG_MEAN_255 = (123.68, 116.78, 103.94)  # slim's vgg_preprocessing _R_MEAN, _G_MEAN, _B_MEAN


def _preset(name: str, size: int, mean, std, **kw) -> Preprocessing:
    return Preprocessing(size=(size, size), mean=tuple(round(m, 8) for m in mean),
                         std=tuple(round(s, 8) for s in std), name=name, **kw)


PRESETS: dict[str, Preprocessing] = {p.name: p for p in (
    _preset("torchvision", 224, IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224),
    _preset("torchvision_v2", 224, IMAGENET_MEAN, IMAGENET_STD, resize=232, crop=224),
    _preset("inception", 299, [0.5] * 3, [0.5] * 3, crop_fraction=0.875),
    _preset("vgg", 224, [m / 255 for m in VGG_MEAN_255], [1 / 255] * 3, resize=256, crop=224),
    _preset("keras_tf", 224, [0.5] * 3, [0.5] * 3),
)}


def preset(name: str) -> Preprocessing:
    """A named preprocessing preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preprocessing preset {name!r}; {did_you_mean(name, PRESETS)} "
                          f"(choose one of {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name])


@cache
def _read_classes(filename: str) -> tuple[str, ...]:
    text = resources.files("resnetkit.weights").joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_class_names(num_classes: int = 1000) -> list[str]:
    """ImageNet-1k class names in the standard (sorted WordNet id) order, from torchvision's list; 1001
    puts TF-slim's 'background' first."""
    if num_classes not in (1000, 1001):
        raise ConfigError(f"ImageNet class lists have 1000 or 1001 entries, not {num_classes}")
    return list(_read_classes("imagenet_classes.txt" if num_classes == 1000 else "imagenet_classes_1001.txt"))
