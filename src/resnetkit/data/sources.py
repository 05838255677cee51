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
from dataclasses import dataclass
from pathlib import Path

from resnetkit.data import datasets, imagenet, memory, shards, stream
from resnetkit.data.datasets import ImageSet
from resnetkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STREAM_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class StreamOptions:
    """How streamed data is read and augmented (the data.* keys of the same names)."""

    stream: str = "auto"  # auto | on | off
    train_crop: int = 224
    eval_resize: int = 0  # 0: train_crop / 0.875 (256 for 224)
    eval_crop: int = 0  # 0: train_crop
    crop_min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction
    flip: bool = True
    auto_augment: str = "none"  # none | trivialaugment | randaugment
    random_erase: float = 0.0  # probability
    draft: bool = True  # JPEG DCT-domain downscaling
    workers: int = 4
    val_path: str | None = None  # a separate validation folder (or shard pattern)

    def transforms(self, channels: int) -> tuple[stream.TrainTransform, stream.EvalTransform]:
        crop = self.eval_crop or self.train_crop
        resize = self.eval_resize or round(crop / 0.875)
        mean = stream.IMAGENET_MEAN if channels == 3 else (sum(stream.IMAGENET_MEAN) / 3,)
        train = stream.TrainTransform(self.train_crop, channels, self.flip, self.auto_augment, self.random_erase,
                                      tuple(round(255 * m) for m in mean), self.draft, (self.crop_min_scale, 1.0))
        return train, stream.EvalTransform(crop, resize, channels, self.draft)


def kind_of(spec: str) -> str:
    """'imagenet', 'shards', 'folder' or 'named' for a dataset spec."""
    if spec.startswith("imagenet:"):
        return "imagenet"
    if spec.startswith("shards:"):
        return "shards"
    if spec.startswith("folder:") or os.sep in spec or Path(spec).is_dir():
        return "folder"
    return "named"


def load_classification(spec: str, data_dir: str | None = None, *, image_size: int = 32, channels: int = 3,
                        strict: bool = False, options: StreamOptions = StreamOptions(),
                        planned_epochs: float | None = None):
    """(train, eval) for a dataset spec: two ImageSets (in memory) or two streamed sets, as `options.stream`
    and the module docstring say."""
    kind = kind_of(spec)
    if options.stream not in STREAM_MODES:
        raise ConfigError(f"stream={options.stream!r}: choose {', '.join(STREAM_MODES)}")
    if kind == "named":
        if options.stream == "on":
            raise ConfigError(f"stream='on': {spec} is held in memory; only folder:, imagenet: and shards: data stream")
        return datasets.load_dataset(spec, data_dir, image_size=image_size, channels=channels, strict=strict)
    if kind != "folder" and options.stream == "off":
        raise ConfigError(f"stream='off': {kind}: data is always streamed")
    path = spec.split(":", 1)[1] if kind != "folder" or spec.startswith("folder:") else spec
    train_t, eval_t = options.transforms(channels)
    if kind == "shards":
        return shards.load_shards(path, options.val_path, train_t, eval_t, strict=strict, workers=options.workers)
    if kind == "imagenet":
        train, val = imagenet.list_imagenet(path)
        log.info("data: ILSVRC-2012 layout %s, %d train / %d val images, streamed", path, len(train), len(val))
    else:
        train, val = _folder_lists(path, options.val_path)
        streamed, why = memory.choose_stream([*train.files, *val.files], image_size, channels, options,
                                             planned_epochs)
        if not streamed:
            log.info("data: %d images in %s held in memory at %d px (%s)", len(train) + len(val), path, image_size,
                     why)
            return datasets.load_dataset("folder:" + path, image_size=image_size, channels=channels, strict=strict,
                                         val=options.val_path)
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


__all__ = ["ImageSet", "StreamOptions", "kind_of", "load_classification", "with_background"]
