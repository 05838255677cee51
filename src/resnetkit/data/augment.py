"""Batched augmentation on uint8 tensors: one gather does pad-and-crop and flip for a whole batch.

The random draws are made for the *global* batch from a generator seeded by (seed, epoch, step), so
the augmentation of an image does not depend on how many processes share the batch, and a resumed
run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugment:
    """Random pad-and-crop (He et al. 2016, sec. 4.2: pad 4, crop 32), horizontal flip, cutout.

    pad: zero padding on each side before the random crop back to the original size (0 = off).
    flip: mirror left-right with probability 1/2.
    cutout: side of a square zeroed after normalisation (DeVries & Taylor 2017), 0 = off.
    """

    pad: int = 0
    flip: bool = False
    cutout: int = 0

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw the random parameters for `n` images (all int64 tensors of shape (n,))."""
        size = (n,)
        # Always draw every field, so the stream of draws does not depend on which options are on.
        return {
            "dy": torch.randint(0, 2 * self.pad + 1, size, generator=generator),
            "dx": torch.randint(0, 2 * self.pad + 1, size, generator=generator),
            "flip": torch.randint(0, 2, size, generator=generator),
            "cy": torch.randint(0, 1 << 30, size, generator=generator),
            "cx": torch.randint(0, 1 << 30, size, generator=generator),
        }

    def crop_flip(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply pad-and-crop and flip to a uint8 batch (N, C, H, W) -> (N, C, H, W)."""
        n, c, h, w = x.shape
        if self.pad == 0 and not self.flip:
            return x
        dev = x.device
        xp = torch.nn.functional.pad(x, (self.pad,) * 4)  # (N, C, H+2p, W+2p), zeros as in the paper
        ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
        rows = p["dy"].to(dev)[:, None] + ar_h  # (N, H)
        cols = p["dx"].to(dev)[:, None] + ar_w  # (N, W)
        if self.flip:
            flipped = p["dx"].to(dev)[:, None] + (w - 1 - ar_w)
            cols = torch.where(p["flip"].to(dev)[:, None].bool(), flipped, cols)
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        return xp[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def apply_cutout(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Zero a cutout x cutout square (clipped at the border) centred anywhere in the image."""
        if self.cutout == 0:
            return x
        n, _, h, w = x.shape
        dev = x.device
        cy = (p["cy"].to(dev) % h)[:, None]
        cx = (p["cx"].to(dev) % w)[:, None]
        half = self.cutout // 2
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (ys >= cy - half) & (ys < cy - half + self.cutout)  # (N, H)
        in_x = (xs >= cx - half) & (xs < cx - half + self.cutout)  # (N, W)
        keep = ~(in_y[:, :, None] & in_x[:, None, :])  # (N, H, W)
        return x * keep[:, None].to(x.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, with mean and std of shape (C,)."""
    x = x.float().div_(255)
    return x.sub_(mean.to(x.device)[:, None, None]).div_(std.to(x.device)[:, None, None])


@dataclass(frozen=True)
class MixAugment:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch, with soft targets.

    Images are mixed in pairs (0, 1), (2, 3), ... of the global batch, each pair with its own draws, so
    a batch mixes the same way whatever the number of processes sharing it (each process's micro-batch
    must hold whole pairs: an even number of images). torchvision's reference mixes each image with its
    neighbour at one lambda per batch; per-pair draws give the same expected mix. With both on, each
    pair picks one of the two with probability 1/2.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 0

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image draws (only the first image of each pair's are used): lam, cut, box centre."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rs = np.random.RandomState(seed)  # torch has no seeded Beta sampler
        lam_mix = rs.beta(self.mixup_alpha, self.mixup_alpha, n) if self.mixup_alpha > 0 else np.ones(n)
        lam_cut = rs.beta(self.cutmix_alpha, self.cutmix_alpha, n) if self.cutmix_alpha > 0 else np.ones(n)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = rs.random_sample(n) < 0.5
        else:
            cut = np.full(n, self.cutmix_alpha > 0)
        return {"mix_lam": torch.from_numpy(np.where(cut, lam_cut, lam_mix)).float(),
                "mix_cut": torch.from_numpy(cut), "mix_cy": torch.from_numpy(rs.random_sample(n)).float(),
                "mix_cx": torch.from_numpy(rs.random_sample(n)).float()}

    def apply(self, x: torch.Tensor, y: torch.Tensor, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) float, y (B,) int -> mixed x and soft targets (B, K)."""
        n, _, h, w = x.shape
        dev = x.device
        first = torch.arange(n, device=dev) & ~1  # each image's pair leader
        partner = torch.arange(n, device=dev) ^ 1
        lam, cut = p["mix_lam"].to(dev)[first], p["mix_cut"].to(dev)[first]  # (B,)
        cy, cx = p["mix_cy"].to(dev)[first] * h, p["mix_cx"].to(dev)[first] * w
        side = torch.sqrt(1 - lam)  # the box covers 1 - lam of the image (before clipping)
        y0, y1 = (cy - side * h / 2).clamp(0, h).round(), (cy + side * h / 2).clamp(0, h).round()
        x0, x1 = (cx - side * w / 2).clamp(0, w).round(), (cx + side * w / 2).clamp(0, w).round()
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (ys >= y0[:, None]) & (ys < y1[:, None])  # (B, H)
        in_x = (xs >= x0[:, None]) & (xs < x1[:, None])  # (B, W)
        box = in_y[:, :, None] & in_x[:, None]  # (B, H, W)
        lam_cut = 1 - box.flatten(1).float().mean(1)  # the area actually kept
        xp = x[partner]
        mixed = torch.where(cut[:, None, None, None], torch.where(box[:, None], xp, x),
                            lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * xp)
        keep = torch.where(cut, lam_cut, lam)[:, None]  # (B, 1)
        one_hot = F.one_hot(y, self.num_classes).float()
        return mixed, keep * one_hot + (1 - keep) * one_hot[partner]
