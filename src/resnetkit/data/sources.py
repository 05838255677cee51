"""Which form a classification dataset takes: in memory (ImageSet) or streamed from files (StreamSet,
ShardSet), chosen by `StreamOptions.stream` (auto | on | off) and logged.

  named sets (fashion-mnist, cifar10, digits, ...)   always in memory
  folder:PATH (or a path)                            auto: resnetkit.data.memory.choose_stream measures what
                                                     holding it costs (memory, decode time against
                                                     planned_epochs); streamed when a streaming-only option
                                                     is on (auto_augment, random_erase)
  imagenet:PATH                                      always streamed (resnetkit.data.imagenet)
  shards:PATTERN                                     always streamed (resnetkit.data.shards)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resnetkit.data import datasets, imagenet, memory, shards, stream
from resnetkit.data.datasets import ImageSet
from resnetkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STREAM_MODES = ("auto", "on", "off")


AUTO_AUGMENTS = ("none", "trivialaugment", "randaugment")


@dataclass(frozen=True)
class StreamOptions:
    """How image files are read and augmented: folders (in memory or streamed), imagenet: and shards:. The
    training config's data section holds these keys (resnetkit.train.config.ClassificationDataConfig)."""

    image_size: int = 32  # image folders held in memory: the size every image is resized to
    channels: int = 3  # image folders: 1 (greyscale) or 3
    strict: bool = False  # image folders: fail on an unreadable image instead of skipping it
    stream: str = "auto"  # auto | on | off: read images lazily in DataLoader workers, or hold them in memory
    # ImageNet-style augmentation of streamed data: RandomResizedCrop to train_crop (0: 224), eval: resize the
    # shorter side to eval_resize (0: eval crop / 0.875, 256 for 224) then center-crop eval_crop (0: train crop).
    train_crop: int = 0
    eval_resize: int = 0
    eval_crop: int = 0
    crop_min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction (1 with flip off: no augmentation)
    flip: bool | None = None  # horizontal flip; None = the data's default (on when streamed, off for digits)
    auto_augment: str = "none"  # none | trivialaugment | randaugment (streamed data)
    random_erase: float = 0.0  # probability of RandomErasing per image (streamed data)
    draft: bool = True  # decode JPEGs at 1/2, 1/4 or 1/8 size in the DCT domain when the crop allows it
    workers: int = 4  # DataLoader worker processes for streamed data (0: decode in the training process)
    val_path: str | None = None  # a separate validation folder (or shard pattern)

    @property
    def stream_flip(self) -> bool:
        """Whether streamed training images are mirrored (unset: yes)."""
        return True if self.flip is None else self.flip

    def transforms(self) -> tuple[stream.TrainTransform, stream.EvalTransform]:
        train_crop = self.train_crop or 224
        crop = self.eval_crop or train_crop
        resize = self.eval_resize or round(crop / 0.875)
        mean = stream.IMAGENET_MEAN if self.channels == 3 else (sum(stream.IMAGENET_MEAN) / 3,)
        train = stream.TrainTransform(train_crop, self.channels, self.stream_flip, self.auto_augment,
                                      self.random_erase, tuple(round(255 * m) for m in mean), self.draft,
                                      (self.crop_min_scale, 1.0))
        return train, stream.EvalTransform(crop, resize, self.channels, self.draft)


DATA_KINDS = ("named", "folder", "imagenet", "shards")


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` value: `kind` (named | folder | imagenet | shards) and `target` (the dataset's name,
    the folder, or the shard pattern)."""

    kind: str
    target: str

    @classmethod
    def parse(cls, text: str | DataSpec) -> DataSpec:
        """'fashion-mnist', 'folder:PATH' (or a path), 'imagenet:PATH', 'shards:PATTERN'."""
        if isinstance(text, DataSpec):
            return text
        prefix, sep, rest = text.partition(":")
        if sep and prefix in ("imagenet", "shards", "folder"):
            return cls(prefix, rest)
        if os.sep in text or Path(text).is_dir():
            return cls("folder", text)
        return cls("named", text)

    def __str__(self) -> str:
        return self.target if self.kind == "named" else f"{self.kind}:{self.target}"


def kind_of(spec: str) -> str:
    """'imagenet', 'shards', 'folder' or 'named' for a dataset spec."""
    return DataSpec.parse(spec).kind


def load_classification(spec: str | DataSpec, data_dir: str | None = None, options: StreamOptions = StreamOptions(),
                        planned_epochs: float | Callable[[int], float | None] | None = None):
    """(train, eval) for a dataset spec: two ImageSets (in memory) or two streamed sets, as `options.stream`
    and the module docstring say. `planned_epochs`: how many passes the run makes (or a function of the
    training images' count giving it), which data.stream=auto weighs against decoding once; None: unknown."""
    spec = DataSpec.parse(spec)
    kind, path = spec.kind, spec.target
    if options.stream not in STREAM_MODES:
        raise ConfigError(f"stream={options.stream!r}: choose {', '.join(STREAM_MODES)}")
    if kind == "named":
        if options.stream == "on":
            raise ConfigError(f"stream='on': {path} is held in memory; only folder:, imagenet: and shards: data stream")
        return datasets.load_dataset(spec, data_dir)
    if kind != "folder" and options.stream == "off":
        raise ConfigError(f"stream='off': {kind}: data is always streamed")
    image_size, channels, strict = options.image_size, options.channels, options.strict
    train_t, eval_t = options.transforms()
    if kind == "shards":
        return shards.load_shards(path, options.val_path, train_t, eval_t, strict=strict, workers=options.workers)
    if kind == "imagenet":
        train, val = imagenet.list_imagenet(path)
        log.info("data: ILSVRC-2012 layout %s, %d train / %d val images, streamed", path, len(train), len(val))
    else:
        train, val = _folder_lists(path, options.val_path)
        epochs = planned_epochs(len(train)) if callable(planned_epochs) else planned_epochs
        streamed, why = memory.choose_stream([*train.files, *val.files], image_size, channels, options, epochs)
        if not streamed:
            log.info("data: %d images in %s held in memory at %d px (%s)", len(train) + len(val), path, image_size,
                     why)
            return datasets.load_image_folder(path, image_size, channels, strict, options.val_path)
        log.info("data: %d images in %s streamed at %d px (%s)", len(train) + len(val), path, train_t.crop, why)
    make = lambda d: stream.StreamSet(d, train_t, eval_t, strict=strict, workers=options.workers,  # noqa: E731
                                      info={"kind": kind})
    return make(train), make(val)


def _folder_lists(path: str, val_path: str | None) -> tuple[stream.FileList, stream.FileList]:
    train_dir, val_dir = datasets.folder_splits(path, val_path)
    train = stream.list_folder(train_dir)
    if val_dir is not None:
        return train, stream.list_folder(val_dir, classes=train.class_names)
    tr, te = datasets.split_90_10(len(train))
    pick = lambda ix: dataclasses.replace(train, files=train.files[ix], labels=train.labels[ix])  # noqa: E731
    return pick(tr), pick(te)


def with_background(data):
    """An ImageNet StreamSet with TF-slim's 1001 classes (background first); other sets are refused."""
    if not isinstance(data, stream.StreamSet) or data.info.get("kind") != "imagenet":
        raise DataError("only imagenet: data has a 1001-class form (background first)")
    return dataclasses.replace(data, data=imagenet.with_background(data.data))


__all__ = ["AUTO_AUGMENTS", "DataSpec", "ImageSet", "StreamOptions", "kind_of", "load_classification",
           "with_background"]
