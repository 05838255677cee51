"""Apply a weights file's preprocessing dict (see resnetkit.weights.registry) to an image."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _center_crop(im: Image.Image, h: int, w: int) -> Image.Image:
    # torchvision's center_crop rounds the offsets: top = round((H - h) / 2)
    top, left = int(round((im.height - h) / 2.0)), int(round((im.width - w) / 2.0))
    return im.crop((left, top, left + w, top + h))


def preprocess(image: Image.Image | str | os.PathLike, pre: dict) -> torch.Tensor:
    """An image (PIL or a path) -> float32 (C, H, W) as the weights expect it.

    Order: central `crop_fraction` then resize to `size` (Inception); or resize the shorter side to
    `resize` then center-crop `crop` (torchvision, VGG); or resize straight to `size`. Then
    (pixels / 255 - mean) / std in `channel_order`.
    """
    im = image if isinstance(image, Image.Image) else Image.open(image)
    im = im.convert("L" if pre.get("grayscale") else "RGB")
    interp = _INTERP[pre.get("interpolation", "bilinear")]
    h, w = pre["size"]
    if pre.get("crop_fraction"):
        f = float(pre["crop_fraction"])
        im = _center_crop(im, max(1, int(im.height * f)), max(1, int(im.width * f)))
        im = im.resize((w, h), interp)
    elif pre.get("resize"):
        short, long_ = sorted((im.width, im.height))
        r = int(pre["resize"])
        new_long = int(r * long_ / short)  # torchvision's resize(int) keeps the aspect ratio this way
        im = im.resize((r, new_long) if im.width <= im.height else (new_long, r), interp)
        c = int(pre.get("crop") or r)
        im = _center_crop(im, c, c)
        if (im.height, im.width) != (h, w):
            im = im.resize((w, h), interp)
    else:
        im = im.resize((w, h), interp)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = x[:, :, None] if x.ndim == 2 else x
    if pre.get("channel_order", "RGB") == "BGR":
        x = x[:, :, ::-1]
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
