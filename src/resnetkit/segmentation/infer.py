"""Inference: whole-image logits on slim's aligned grid, evaluation over a split, masks and overlays."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from resnetkit.segmentation.data import SegSet, normalize_one, voc_palette
from resnetkit.segmentation.metrics import confusion_matrix, scores


def aligned_size(n: int, stride: int) -> int:
    """The smallest stride*k + 1 >= n: the size whose last feature sits on the last pixel."""
    return stride * max(0, -(-(n - 1) // stride)) + 1


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> (N, K, H, W) logits.

    As DeepLab evaluates: pad bottom/right with 0 (the mean after normalisation) to the aligned size
    stride*k + 1, run, upsample with align_corners=True, and crop back to (H, W).
    """
    h, w = x.shape[-2:]
    s = getattr(model, "output_stride", 32)
    ah, aw = aligned_size(h, s), aligned_size(w, s)
    xp = F.pad(x, (0, aw - w, 0, ah - h)) if (ah, aw) != (h, w) else x
    return model(xp)[..., :h, :w]


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, data: SegSet, mean, std, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> dict:
    """Confusion matrix over a split at full resolution -> {"miou", "pixel_acc", "iou", "confusion", "n"}.

    Images of one size are batched; otherwise each image runs alone (no resizing: the model is fully
    convolutional).
    """
    model.eval()
    k = data.num_classes
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    cm = torch.zeros(k, k, dtype=torch.int64)
    step = batch_size if data.same_size() else 1
    for i in range(0, len(data), step):
        x = torch.stack([normalize_one(im, mean_t, std_t) for im in data.images[i:i + step]]).to(device)
        y = torch.stack(data.masks[i:i + step])
        pred = predict_logits(model, x).argmax(1).cpu()
        cm += confusion_matrix(pred, y, k)
    return {**scores(cm), "confusion": cm, "n": len(data)}


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 VOC colours."""
    return voc_palette()[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend VOC colours over an (H, W, 3) uint8 image where the class is not background (0)."""
    colours = colorize(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = (mask != 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * colours, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def atomic_save(im: Image.Image, path: Path, **kw) -> None:
    """Write an image atomically (temp file in the same folder, then rename); the suffix picks the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        im.save(tmp, **kw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def palette_png(mask: np.ndarray) -> Image.Image:
    """(H, W) uint8 class indices -> a 'P' image with VOC's palette (the format of SegmentationClass)."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    im.putpalette(voc_palette().flatten().tolist())
    return im
