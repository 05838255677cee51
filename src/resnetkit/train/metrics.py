"""Segmentation metrics from one confusion matrix: per-class IoU, mean IoU, pixel accuracy.

IoU_k = TP_k / (TP_k + FP_k + FN_k) (Everingham et al., PASCAL VOC); the mean is over the classes that
occur in the ground truth or the predictions (union > 0), as TF's `mean_iou` and DeepLab report it.
Pixels labelled with the ignore label count nowhere.
"""

from __future__ import annotations

import torch

from resnetkit.data.segmentation import IGNORE


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int = IGNORE
                     ) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted; pred and target of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t, p = target.flatten().long(), pred.flatten().long()
    keep = t != ignore
    t, p = t[keep], p[keep]
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"target holds class {int(t.max())}, outside 0..{num_classes - 1}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def scores(cm: torch.Tensor) -> dict:
    """{"miou", "pixel_acc", "iou" (per class, nan where the class is absent from truth and predictions)}."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = union > 0
    total = cm.sum()
    return {"miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "iou": iou.tolist()}
