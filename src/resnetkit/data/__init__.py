"""Datasets held in memory as uint8 tensors or streamed from image files and tar shards, and batched
augmentation on them (resnetkit.data.sources chooses which form a dataset takes)."""

from resnetkit.data.augment import BatchAugment, MixAugment, normalize
from resnetkit.data.datasets import DATASETS, ImageSet, load_dataset
from resnetkit.data.sources import StreamOptions, load_classification, with_background

__all__ = ["DATASETS", "BatchAugment", "ImageSet", "MixAugment", "StreamOptions", "load_classification",
           "load_dataset", "normalize", "with_background"]
