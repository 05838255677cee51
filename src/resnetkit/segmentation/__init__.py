"""Semantic segmentation: backbone + slim / ASPP heads, VOC data, mIoU, training and inference."""

from resnetkit.segmentation.data import IGNORE, VOC_CLASSES, JointAugment, SegSet, load_split, voc_palette
from resnetkit.segmentation.metrics import confusion_matrix, scores
from resnetkit.segmentation.models import (
    ARCH,
    SegmentationConfig,
    SegModel,
    create_segmentation_model,
    load_backbone_weights,
    upsample_logits,
)

__all__ = ["ARCH", "IGNORE", "VOC_CLASSES", "JointAugment", "SegModel", "SegSet", "SegmentationConfig",
           "confusion_matrix", "create_segmentation_model", "load_backbone_weights", "load_split", "scores",
           "upsample_logits", "voc_palette"]
