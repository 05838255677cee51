"""A synthetic VOC-layout segmentation set: coloured shapes on textured backgrounds.

The class of a shape is its form, never its colour (colours are drawn independently of the class), so
a network has to look at shape. Every image is a function of (seed, split, index) alone: the same seed
gives the same files whatever --n-train / --n-val are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resnetkit._helpers import atomic_save_image, atomic_write_text
from resnetkit.data.segmentation import palette_png
from resnetkit.errors import ConfigError, OutputExistsError

SHAPE_CLASSES = ("background", "circle", "square", "triangle", "diamond", "cross")
_SPLIT_KEY = {"train": 0, "val": 1}


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float: a two-colour gradient, a random stripe or checker texture, and noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    period = rng.uniform(4, 16)
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        tex = np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) * size / period)
    elif kind == 1:  # checkerboard
        tex = np.sign(np.sin(2 * np.pi * xx * size / period) * np.sin(2 * np.pi * yy * size / period))
    else:  # blotches: smoothed noise
        tex = rng.normal(size=(size // 4 + 1, size // 4 + 1))
        tex = np.kron(tex, np.ones((4, 4)))[:size, :size]
    img = img + rng.uniform(10, 35) * tex[..., None]
    return img + rng.normal(0, 6, img.shape)


def _polygon(cls: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if cls == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if cls == "diamond":
        return [(cx, cy - r * 1.3), (cx + r * 1.3, cy), (cx, cy + r * 1.3), (cx - r * 1.3, cy)]
    if cls == "triangle":
        return [(cx + r * 1.2 * math.cos(a), cy + r * 1.2 * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if cls == "cross":
        w = r / 3
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None


def make_sample(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its mask (size, size) uint8 of SHAPE_CLASSES indices."""
    rng = np.random.default_rng((seed, _SPLIT_KEY[split], index))
    bg = textured_background(rng, size)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(rng.integers(1, 4)):
        k = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        # A colour far from the local background, so every shape is visible.
        local = bg[int(cy - r):int(cy + r) + 1, int(cx - r):int(cx + r) + 1].reshape(-1, 3).mean(0)
        colour = rng.uniform(0, 255, 3)
        for _ in range(20):
            if np.abs(colour - local).sum() > 150:
                break
            colour = rng.uniform(0, 255, 3)
        fill = tuple(int(c) for c in colour)
        poly = _polygon(SHAPE_CLASSES[k], cx, cy, r)
        if poly is None:  # circle
            box = (cx - r, cy - r, cx + r, cy + r)
            di.ellipse(box, fill=fill)
            dm.ellipse(box, fill=k)
        else:
            di.polygon(poly, fill=fill)
            dm.polygon(poly, fill=k)
    a = np.asarray(img, dtype=np.float64) + rng.normal(0, 4, (size, size, 3))  # sensor noise over shapes too
    return np.clip(a, 0, 255).astype(np.uint8), np.asarray(mask, dtype=np.uint8)


def make_shapes(root: str | Path, n_train: int = 1000, n_val: int = 200, size: int = 64, seed: int = 0,
                overwrite: bool = False) -> Path:
    """Write the set in VOC layout under `root`: JPEGImages/, SegmentationClass/ (palette PNGs),
    ImageSets/Segmentation/{train,val}.txt and classes.txt. A non-empty `root` is refused unless
    `overwrite` (then files of the same names are replaced)."""
    if size < 16:
        raise ConfigError(f"size {size}: too small for shapes; use 16 or more")
    check_counts(n_train, n_val, seed)
    return write_voc_set(root, {"train": n_train, "val": n_val}, lambda split, i: make_sample(seed, split, i, size),
                         SHAPE_CLASSES, overwrite)


def check_counts(n_train: int, n_val: int, seed: int) -> None:
    """The arguments every generated set takes, checked by name."""
    if seed < 0:
        raise ConfigError(f"seed {seed} must be a non-negative integer")
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"n_train {n_train} and n_val {n_val} must be at least 1")


def prepare_root(root: str | Path, overwrite: bool) -> Path:
    """The generated sets' output policy: `root` must be a new or empty folder unless `overwrite`."""
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise OutputExistsError(f"{root} is not empty; choose a new folder, or pass overwrite=True (CLI: "
                                "--overwrite) to write the set over what is there")
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{root} is a file, not a folder")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def write_voc_set(root: str | Path, counts: dict[str, int], sample: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
                  class_names: Sequence[str], overwrite: bool = False) -> Path:
    """Write `counts[split]` samples of each split, `sample(split, i)` -> (image (H, W, 3) uint8, mask (H, W)
    uint8), in VOC layout under `root` (see make_shapes), each file atomically; returns `root`."""
    root = prepare_root(root, overwrite)
    for split, n in counts.items():
        ids = []
        for i in range(n):
            name = f"{split}_{i:06d}"
            img, mask = sample(split, i)
            # Quality 95 keeps JPEG blocking small next to the objects' edges; masks stay lossless PNG.
            atomic_save_image(Image.fromarray(img), root / "JPEGImages" / f"{name}.jpg", quality=95)
            atomic_save_image(palette_png(mask), root / "SegmentationClass" / f"{name}.png")
            ids.append(name)
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    atomic_write_text(root / "classes.txt", "\n".join(class_names) + "\n")
    return root
