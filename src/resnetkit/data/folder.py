"""An ImageFolder-layout directory (ROOT/CLASS/IMAGE) read into memory at a fixed size."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from resnetkit._helpers import open_image
from resnetkit.errors import DataError, MissingFileError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Files under each class folder (sorted), and the class names (sorted folder names)."""
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such directory; pass an ImageFolder layout ROOT/CLASS/IMAGE")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders; expected ROOT/CLASS/IMAGE, e.g. {root}/cat/1.png")
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not items:
        raise DataError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return items, classes


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image -> uint8 (C, size, size); raises a DataError when unreadable."""
    im = open_image(path, "L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    a = np.array(im, dtype=np.uint8)  # a writable copy
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def read_folder(root: str | Path, size: int, channels: int = 3, strict: bool = False,
                classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ROOT/CLASS/IMAGE into images (N, C, size, size) uint8, labels (N,), class names.

    Unreadable images are skipped and counted (the first few named in the log); with strict=True the
    first one raises a DataError instead. `classes` fixes the label order (e.g. a test split must use
    the train split's classes).
    """
    root = Path(root)
    items, found = list_images(root)
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root}: class folders {extra} are not among the training classes {classes}")
        index = {c: i for i, c in enumerate(classes)}
        items = [(p, index[found[y]]) for p, y in items]
        found = classes
    return (*read_items(items, size, channels, strict, root), list(found))


def read_items(items: list[tuple[Path, int]], size: int, channels: int = 3, strict: bool = False,
               root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode (path, label) items into images (N, C, size, size) uint8 and labels (N,) int64, skipping
    (or with strict=True refusing) unreadable images as read_folder says.

    The array is allocated once and filled in place: a list of per-image arrays stacked at the end would
    hold every image twice at the peak.
    """
    images = np.empty((len(items), channels, size, size), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int64)
    n, bad = 0, []
    for path, y in items:
        try:
            images[n] = load_image(path, size, channels)
        except DataError as e:
            if strict:
                raise DataError(f"{e}; remove it, or skip such images (strict=False)") from None
            bad.append(path)
            continue
        labels[n] = y
        n += 1
    if bad:
        log.warning("skipped %d unreadable image(s) under %s, e.g. %s", len(bad), root or bad[0].parent,
                    ", ".join(str(p.relative_to(root) if root else p) for p in bad[:5]))
    if not n:
        raise DataError(f"{root or items[0][0].parent}: none of the {len(items)} images could be read")
    # A view: the rows of skipped images stay allocated (a copy would hold the images twice).
    return images[:n], labels[:n]


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files named in `inputs` (for predict / segment), folders searched recursively and sorted."""
    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise MissingFileError(f"{s}: no such file or directory")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files
