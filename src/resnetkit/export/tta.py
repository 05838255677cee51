"""Test-time augmentation as a wrapper around any model or backend.

  flip        the image and its mirror (classification and segmentation; a segmentation mirror's
              logits are mirrored back before averaging)
  multiscale  segmentation: the image at 0.75, 1 and 1.25 times its size (each run on slim's aligned
              grid), logits resized back to the image, plus the mirror of each (DeepLab's evaluation)

Probabilities are averaged and returned as log-probabilities, so argmax and cross-entropy keep their
meaning for the code that calls the wrapper as it would call the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.export.segment import predict_logits

TTA_MODES = ("flip", "multiscale")
SCALES = (0.75, 1.0, 1.25)


class TTA(nn.Module):
    """`run` under test-time augmentation `mode`; (N, C, H, W) -> log-probabilities shaped like run's output."""

    def __init__(self, run: nn.Module, mode: str, segmentation: bool):
        super().__init__()
        if mode not in TTA_MODES:
            raise ConfigError(f"tta {mode!r}: choose one of {', '.join(TTA_MODES)}")
        if mode == "multiscale" and not segmentation:
            raise ConfigError("tta 'multiscale' is for segmentation models; use 'flip' for a classifier")
        self.run, self.mode, self.segmentation = run, mode, segmentation
        # predict_logits pads to the output stride's aligned grid; this wrapper aligns each scale itself.
        self.output_stride = 1
        # Callers look at the first parameter's device to place inputs.
        self.anchor = nn.Parameter(torch.empty(0, device=next(run.parameters()).device), requires_grad=False)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        if not self.segmentation:
            return self.run(x).float().softmax(1)
        return predict_logits(self.run, x).float().softmax(1)  # aligned grid, cropped back to x's size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scales = SCALES if self.mode == "multiscale" else (1.0,)
        total = 0
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            for flip in (False, True):
                p = self._probs(xs.flip(-1) if flip else xs)
                p = p.flip(-1) if flip and self.segmentation else p
                if p.ndim == 4 and p.shape[-2:] != (h, w):
                    p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
                total = total + p
        return log_of_mean(total, 2 * len(scales))


def log_of_mean(total_probs: torch.Tensor, n: int) -> torch.Tensor:
    """How views are combined: the log of the mean of `n` views' probabilities (their sum given)."""
    return (total_probs / n).clamp_min(1e-12).log()


def with_tta(run: nn.Module, mode: str | None, *, segmentation: bool = False) -> nn.Module:
    """`run` itself when `mode` is None, else wrapped in TTA."""
    return run if mode is None else TTA(run, mode, segmentation)
