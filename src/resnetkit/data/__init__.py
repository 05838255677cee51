"""Datasets held in memory as uint8 tensors, and batched augmentation on them."""

from resnetkit.data.augment import BatchAugment, normalize
from resnetkit.data.datasets import DATASETS, ImageSet, load_dataset

__all__ = ["DATASETS", "BatchAugment", "ImageSet", "load_dataset", "normalize"]
