"""The catalogue of published weights (plain data), described apart from the architecture (`arch.tag`, in
the spirit of torchvision's weights enums and timm's tags): where each file is, how to check it, which
converter reads it, which preprocessing preset its inputs need, and the accuracy its publisher reports.
`resnetkit.pretrained.loader` downloads, verifies and converts them.
"""

from __future__ import annotations

import dataclasses

from resnetkit._helpers import did_you_mean
from resnetkit.errors import ConfigError
from resnetkit.weights.presets import imagenet_class_names


# -------------------------------------------------------------------------------------------- entries
@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file and everything needed to use it."""

    tag: str                   # 'resnet50.tv_in1k': the architecture, then which weights
    url: str
    kind: str                  # 'tf-slim' (tarball of a checkpoint), 'torchvision' (.pth), 'keras' (.h5)
    num_classes: int
    preprocessing: str         # a resnetkit.weights.PRESETS name
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
    """The catalogue entry of `tag` (ConfigError with close matches when unknown)."""
    if tag not in REGISTRY:
        hint = did_you_mean(tag, REGISTRY, f"known: {', '.join(REGISTRY)}")
        raise ConfigError(f"unknown pretrained weights {tag!r}; {hint}")
    return REGISTRY[tag]
