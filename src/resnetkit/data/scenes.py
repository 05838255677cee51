"""A VOC-layout segmentation set of real objects: Fashion-MNIST items composed into scenes.

Each canvas (default 128x128 RGB) is a background, a random crop of one of the photographs scikit-learn
ships (china.jpg, flower.jpg) or a procedural texture (the shapes set's), with 2 to 5 Fashion-MNIST items
pasted on it at random scale (a quarter to over half the side), position and mirror, tinted with a colour
far from the background under them. An item's mask is its pixels above `ITEM_THRESHOLD`; later items
occlude earlier ones, and the label of a pixel is the class of the item visible there (0 background, 1..10
the Fashion-MNIST classes), so the labels are exact. Train scenes draw items from Fashion-MNIST's train
split, val scenes from its test split, so no val item was seen in training. Every scene is a function of
(seed, split, index) alone: the same seed gives the same files whatever n_train / n_val are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from resnetkit.data.datasets import load_dataset
from resnetkit.data.shapes import check_counts, textured_background, write_voc_set
from resnetkit.errors import ConfigError

ITEM_THRESHOLD = 16  # of 255: Fashion-MNIST's backgrounds are 0 with faint noise; its items' darkest parts ~20
BACKGROUNDS = ("mixed", "photos", "textures")
_SPLIT_KEY = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SceneSources:
    """What scenes are made of: Fashion-MNIST items (N, 28, 28) uint8 and labels (N,) per scene split,
    the class names, and the background photographs (H, W, 3) uint8."""

    items: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    photos: tuple[np.ndarray, ...]


def load_sources(data_dir: str | None = None, backgrounds: str = "mixed") -> SceneSources:
    """Fashion-MNIST (from `data_dir`, else where resnetkit.data.load_dataset finds it) and the photos."""
    if backgrounds not in BACKGROUNDS:
        raise ConfigError(f"backgrounds {backgrounds!r}: choose one of {', '.join(BACKGROUNDS)}")
    train, test = load_dataset("fashion-mnist", data_dir)
    photos = ()
    if backgrounds != "textures":
        # Imported here: scikit-learn adds a second to every import of resnetkit, and only this needs it.
        from sklearn.datasets import load_sample_images

        photos = tuple(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)
    return SceneSources(items={"train": train.images[:, 0].numpy(), "val": test.images[:, 0].numpy()},
                        labels={"train": train.labels.numpy(), "val": test.labels.numpy()},
                        class_names=("background", *train.class_names), photos=photos)


def _photo_crop(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """(size, size, 3) float: a random square crop (a quarter of the short side to all of it), resized."""
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    a = np.asarray(crop, dtype=np.float64)
    return a[:, ::-1] if rng.random() < 0.5 else a


def _tint(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour far from `under` (the mean colour below the item), so every item is visible."""
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.abs(colour - under).sum() > 150:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _paste(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, item: np.ndarray, cls: int) -> None:
    """Paste one (28, 28) item, scaled, mirrored, tinted, over `canvas` and `labels` in place."""
    size = canvas.shape[0]
    side = max(8, int(round(rng.uniform(0.25, 0.6) * size)))
    g = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), dtype=np.float64)
    g = g[:, ::-1] if rng.random() < 0.5 else g
    mask = g > ITEM_THRESHOLD  # (side, side)
    y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
    region, region_labels = canvas[y:y + side, x:x + side], labels[y:y + side, x:x + side]  # views
    if not mask.any():
        return
    colour = _tint(rng, region[mask].mean(0))
    # The item's own shading (folds, prints) survives the tint: intensity 255 -> the colour, 0 -> 35% of it.
    shade = 0.35 + 0.65 * g[..., None] / 255
    region[mask] = (shade * colour)[mask]
    region_labels[mask] = cls


def make_scene(sources: SceneSources, seed: int, split: str, index: int, size: int = 128, min_items: int = 2,
               max_items: int = 5, backgrounds: str = "mixed") -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (size, size, 3) uint8 and mask (size, size) uint8 (0 background, 1..10 the items)."""
    rng = np.random.default_rng((seed, _SPLIT_KEY[split], index))
    photo = backgrounds == "photos" or (backgrounds == "mixed" and rng.random() < 0.5)
    canvas = _photo_crop(rng, sources.photos, size) if photo else textured_background(rng, size)
    canvas = np.ascontiguousarray(canvas)
    labels = np.zeros((size, size), np.uint8)
    items, item_labels = sources.items[split], sources.labels[split]
    for _ in range(int(rng.integers(min_items, max_items + 1))):
        k = int(rng.integers(len(items)))
        _paste(rng, canvas, labels, items[k], int(item_labels[k]) + 1)
    canvas += rng.normal(0, 3, canvas.shape)  # sensor noise over items and background alike
    return np.clip(canvas, 0, 255).astype(np.uint8), labels


def make_scenes(root: str | Path, n_train: int = 2000, n_val: int = 500, size: int = 128, seed: int = 0,
                data_dir: str | None = None, overwrite: bool = False, min_items: int = 2, max_items: int = 5,
                backgrounds: str = "mixed") -> Path:
    """Write the scenes set in VOC layout under `root`, as resnetkit.data.shapes.make_shapes does:
    JPEGImages/, SegmentationClass/ (palette PNGs), ImageSets/Segmentation/{train,val}.txt, classes.txt
    (background + Fashion-MNIST's 10 classes). `data_dir`: the Fashion-MNIST idx files' folder.
    `backgrounds`: 'mixed' (half photos, half textures), 'photos' or 'textures'. A non-empty `root` is
    refused unless `overwrite`."""
    if size < 32:
        raise ConfigError(f"size {size}: too small for scenes; use 32 or more")
    if not 1 <= min_items <= max_items <= 20:
        raise ConfigError(f"min_items {min_items} and max_items {max_items}: need 1 <= min_items <= max_items <= 20")
    check_counts(n_train, n_val, seed)
    sources = load_sources(data_dir, backgrounds)
    return write_voc_set(root, {"train": n_train, "val": n_val},
                         lambda split, i: make_scene(sources, seed, split, i, size, min_items, max_items, backgrounds),
                         sources.class_names, overwrite)
