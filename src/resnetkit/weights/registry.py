"""Pretrained weights, described apart from the architecture (`arch.tag`, in the spirit of torchvision's
weights enums and timm's tags): where the file is, how to check it, how to convert it, how its inputs
must be preprocessed, and the accuracy its publisher reports.

`load_pretrained('resnet50.tv_in1k')` downloads into the cache (`$RESNETKIT_CACHE`, else
~/.cache/resnetkit), checks the hash, converts once to our safetensors format (kept in the cache) and
returns the model with `.class_names` and `.preprocessing`.

Preprocessing dicts (stored in every weights file; `resnetkit.weights.preprocess` applies them):
  size            [H, W] of the network input
  resize          shorter side to resize to before a center crop of `crop` (torchvision, VGG), or absent
  crop            center crop size (square), or absent
  crop_fraction   central fraction of the image kept before resizing to `size` (Inception), or absent
  interpolation   'bilinear' (all presets here)
  mean, std       per channel, in `channel_order`, for pixels scaled to [0, 1]: x = (p / 255 - mean) / std
                  (VGG's mean subtraction in 0-255 units is mean = m / 255, std = 1 / 255)
  channel_order   'RGB'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from functools import cache
from importlib import resources
from pathlib import Path

from resnetkit.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VGG_MEAN_255 = [123.68, 116.78, 103.94]  # slim's vgg_preprocessing _R_MEAN, _G_MEAN, _B_MEAN


def _preset(name: str, size: int, *, resize: int | None = None, crop: int | None = None,
            crop_fraction: float | None = None, mean, std) -> dict:
    d = {"name": name, "size": [size, size], "interpolation": "bilinear", "mean": [round(m, 8) for m in mean],
         "std": [round(s, 8) for s in std], "channel_order": "RGB"}
    d.update({k: v for k, v in (("resize", resize), ("crop", crop), ("crop_fraction", crop_fraction)) if v})
    return d


PRESETS: dict[str, dict] = {
    # torchvision's ImageClassification(crop_size=224, resize_size=256)
    "torchvision": _preset("torchvision", 224, resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # torchvision's IMAGENET1K_V2 recipe weights are evaluated at resize 232
    "torchvision_v2": _preset("torchvision_v2", 224, resize=232, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # slim's inception_preprocessing (eval): central crop 87.5%, resize to 299, scale to [-1, 1]
    "inception": _preset("inception", 299, crop_fraction=0.875, mean=[0.5] * 3, std=[0.5] * 3),
    # slim's vgg_preprocessing (eval): shorter side 256, central crop 224, subtract the RGB means (0-255)
    "vgg": _preset("vgg", 224, resize=256, crop=224, mean=[m / 255 for m in VGG_MEAN_255], std=[1 / 255] * 3),
    # keras.applications.resnet_v2.preprocess_input (mode 'tf'): x / 127.5 - 1, on a 224x224 image
    "keras_tf": _preset("keras_tf", 224, mean=[0.5] * 3, std=[0.5] * 3),
}


def preset(name: str) -> dict:
    """A copy of a named preprocessing preset."""
    if name not in PRESETS:
        raise UserError(f"unknown preprocessing preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


@cache
def _read_classes(filename: str) -> tuple[str, ...]:
    text = resources.files("resnetkit.weights").joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_class_names(num_classes: int = 1000) -> list[str]:
    """ImageNet-1k class names in the standard (sorted WordNet id) order, from torchvision's list; 1001
    puts TF-slim's 'background' first."""
    if num_classes not in (1000, 1001):
        raise ValueError(f"ImageNet class lists have 1000 or 1001 entries, not {num_classes}")
    return list(_read_classes("imagenet_classes.txt" if num_classes == 1000 else "imagenet_classes_1001.txt"))


# -------------------------------------------------------------------------------------------- entries
@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file and everything needed to use it."""

    tag: str                   # 'resnet50.tv_in1k': the architecture, then which weights
    url: str
    kind: str                  # 'tf-slim' (tarball of a checkpoint), 'torchvision' (.pth), 'keras' (.h5)
    num_classes: int
    preprocessing: str         # a PRESETS name
    top1: float                # published ImageNet-1k val accuracy, %
    top5: float
    metrics_source: str        # where top1/top5 were published
    sha256: str | None = None  # full sha256 where one is published; None: unknown, logged on first download
    sha256_prefix: str | None = None  # torchvision's file names carry the first hex digits of the sha256
    md5: str | None = None     # Keras publishes md5 (keras/src/applications/resnet.py WEIGHTS_HASHES)
    notes: str = ""

    @property
    def arch(self) -> str:
        return self.tag.split(".")[0]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def class_names(self) -> list[str]:
        return imagenet_class_names(self.num_classes)


_SLIM = "http://download.tensorflow.org/models/"
_SLIM_README = "tensorflow/models research/slim README (single center crop)"
_TV = "https://download.pytorch.org/models/"
_TV_DOCS = "torchvision docs (ResNet*_Weights meta, acc@1 / acc@5)"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_KERAS_DOCS = "keras.io/api/applications (ImageNet val, 224x224)"

_ENTRIES = [
    # TF-slim ResNet v1 (converted by Google from the MSRA Caffe models): 1000 classes, VGG preprocessing.
    *[PretrainedWeights(f"resnet_v1_{d}.tf_slim", f"{_SLIM}resnet_v1_{d}_2016_08_28.tar.gz", "tf-slim", 1000, "vgg",
                        t1, t5, _SLIM_README, notes="no published checksum")
      for d, t1, t5 in ((50, 75.2, 92.2), (101, 76.4, 92.9), (152, 76.8, 93.2))],
    # TF-slim ResNet v2: 1001 classes (index 0 'background'), Inception preprocessing at 299 px.
    *[PretrainedWeights(f"resnet_v2_{d}.tf_slim", f"{_SLIM}resnet_v2_{d}_2017_04_14.tar.gz", "tf-slim", 1001,
                        "inception", t1, t5, _SLIM_README, notes="no published checksum")
      for d, t1, t5 in ((50, 75.6, 92.8), (101, 77.0, 93.7), (152, 77.8, 94.1))],
    # torchvision IMAGENET1K_V1 and V2 (the sha256 prefix is in the file name).
    *[PretrainedWeights(f"resnet{d}.tv_in1k", f"{_TV}resnet{d}-{h}.pth", "torchvision", 1000, "torchvision", t1, t5,
                        _TV_DOCS, sha256_prefix=h)
      for d, h, t1, t5 in ((18, "f37072fd", 69.758, 89.078), (34, "b627a593", 73.314, 91.420),
                           (50, "0676ba61", 76.130, 92.862), (101, "63fe2227", 77.374, 93.546),
                           (152, "394f9c45", 78.312, 94.046))],
    *[PretrainedWeights(f"resnet{d}.tv2_in1k", f"{_TV}resnet{d}-{h}.pth", "torchvision", 1000, "torchvision_v2", t1,
                        t5, _TV_DOCS, sha256_prefix=h)
      for d, h, t1, t5 in ((50, "11ad3fa6", 80.858, 95.434), (101, "cd907fc2", 81.886, 95.780),
                           (152, "f82ba261", 82.284, 96.002))],
    # Keras ResNetV2 (keras-applications): 1000 classes, x / 127.5 - 1.
    *[PretrainedWeights(f"resnet_v2_{d}.keras", f"{_KERAS}resnet{d}v2_weights_tf_dim_ordering_tf_kernels.h5", "keras",
                        1000, "keras_tf", t1, t5, _KERAS_DOCS, md5=md5)
      for d, md5, t1, t5 in ((50, "3ef43a0b657b3be2300d5770ece849e0", 76.0, 93.0),
                             (101, "6343647c601c52e1368623803854d971", 77.2, 93.8),
                             (152, "a49b44d1979771252814e80f8ec446f9", 78.0, 94.2))],
]
REGISTRY: dict[str, PretrainedWeights] = {w.tag: w for w in _ENTRIES}


def list_pretrained(arch: str | None = None) -> list[str]:
    """Registered weight tags, optionally only those of one architecture."""
    return [t for t, w in REGISTRY.items() if arch is None or w.arch == arch]


def get_weights(tag: str) -> PretrainedWeights:
    if tag not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(tag, REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
        raise UserError(f"unknown pretrained weights {tag!r}; {hint}")
    return REGISTRY[tag]


# -------------------------------------------------------------------------------------------- loading
def _convert(w: PretrainedWeights, raw: Path, cache: Path):
    from resnetkit import convert

    if w.kind == "tf-slim":
        from resnetkit.download import safe_extract_tar

        folder = safe_extract_tar(raw, cache / "extracted" / w.tag)
        try:
            return convert.from_tf_slim(convert.find_tf_checkpoint(folder), arch=w.arch)
        finally:  # the converted file is what is kept; the tarball stays in downloads/
            shutil.rmtree(folder, ignore_errors=True)
    if w.kind == "torchvision":
        return convert.from_torchvision(raw, arch=w.arch)
    if w.kind == "keras":
        return convert.from_keras(raw, arch=w.arch)
    raise ValueError(f"unknown weights kind {w.kind!r}")


def load_pretrained(tag: str, *, cache: str | os.PathLike | None = None, opener=None):
    """The model of registered weights `tag`, ready for inference (eval mode, `.class_names`,
    `.preprocessing`). Downloads and converts on first use; later calls read the converted file."""
    from resnetkit import download as dl
    from resnetkit.weights.io import load, save_weights

    w = get_weights(tag)
    cache = Path(cache) if cache is not None else dl.cache_dir()
    converted = cache / "converted" / f"{tag}.safetensors"
    if not converted.is_file():
        kw = {"opener": opener} if opener is not None else {}
        raw = dl.download(w.url, cache / "downloads" / w.filename, sha256=w.sha256, sha256_prefix=w.sha256_prefix,
                          md5=w.md5, **kw)
        model = _convert(w, raw, cache)
        save_weights(model, converted, class_names=w.class_names(), preprocessing=preset(w.preprocessing),
                     source=f"{tag} converted from {w.url}",
                     extra={"tag": tag, "top1": w.top1, "top5": w.top5, "metrics_source": w.metrics_source,
                            "file_sha256": dl.file_hashes(raw)["sha256"]})
        log.info("converted %s -> %s", raw, converted)
    return load(converted)


def pretrained_model(name: str, pretrained, **kwargs):
    """`create_model(name, pretrained=...)`: `pretrained` is True (the first registered weights of `name`),
    a registry tag, or a path to one of our safetensors files. Extra kwargs rebuild the model around
    the loaded weights (output_stride, global_pool, ...); they must keep every tensor's shape."""
    from resnetkit.models import create_model
    from resnetkit.weights.io import load

    if pretrained is True:
        tags = list_pretrained(name)
        if not tags:
            raise UserError(f"no registered pretrained weights for {name!r}; pass a weights file instead")
        pretrained = tags[0]
    src = str(pretrained)
    if src in REGISTRY:
        if REGISTRY[src].arch != name:
            raise UserError(f"weights {src!r} are for {REGISTRY[src].arch}, not {name}")
        model = load_pretrained(src)
    elif Path(src).is_file():
        model = load(src)
    else:
        tags = list_pretrained(name)
        raise UserError(f"pretrained={src!r} is neither a weights file nor a registered tag"
                        f"{' (for ' + name + ': ' + ', '.join(tags) + ')' if tags else ''}")
    arch = model.config.arch
    if arch != name:
        raise UserError(f"{src} holds a {arch}, not a {name}")
    if not kwargs:
        return model
    config = {**model.config.kwargs, **kwargs}
    rebuilt = create_model(name, **config)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"options {sorted(kwargs)} do not fit the weights in {src}: {first}") from None
    rebuilt.eval()  # the head loaded strictly, so the class names still apply
    rebuilt.class_names, rebuilt.preprocessing = model.class_names, model.preprocessing
    rebuilt.weights_metadata = model.weights_metadata
    return rebuilt
