"""Batched augmentation on uint8 tensors: one gather does pad-and-crop and flip for a whole batch.

The random draws are made for the *global* batch from a generator seeded by (seed, epoch, step), so
the augmentation of an image does not depend on how many processes share the batch, and a resumed
run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
