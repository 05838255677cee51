"""Segmentation data: PASCAL VOC 2012 layout, plain image/mask folder pairs, joint augmentation.

Layouts read by `load_split(root, split)`:
  VOC    ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClass/ID.png (palette PNG: pixel = class index, 255 =
         ignore), ROOT/ImageSets/Segmentation/{train,val}.txt (one ID per line). ROOT may also be the
         folder holding VOC2012/ or VOCdevkit/VOC2012/.
  pairs  ROOT/SPLIT/images/NAME.(jpg|png|...) and ROOT/SPLIT/masks/NAME.png.
Class names come from ROOT/classes.txt (one per line, background first) when present, else VOC's 21.

Splits are held in memory as lists of uint8 tensors, images (3, H, W) and masks (H, W), since VOC's
images differ in size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from resnetkit._helpers import open_image
from resnetkit.errors import DataError, MissingFileError

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
# ImageNet statistics (0-1 scale), used when a model brings no preprocessing of its own.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def voc_palette() -> np.ndarray:
    """VOC's colour map (256, 3) uint8: index bits spread over the high bits of R, G, B (VOCdevkit's
    labelcolormap); 255 (ignore) is (224, 224, 192)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass
class SegSet:
    """One split in memory and how to normalise it."""

    images: list[torch.Tensor]  # (3, H, W) uint8 each
    masks: list[torch.Tensor]  # (H, W) uint8 each: class index, or IGNORE
    names: list[str]  # image ids, for messages and outputs
    class_names: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, n: int) -> SegSet:
        return SegSet(self.images[:n], self.masks[:n], self.names[:n], self.class_names, self.mean, self.std,
                      self.info)

    def same_size(self) -> bool:
        return len({tuple(m.shape) for m in self.masks}) == 1

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std (0-1 scale) over all pixels of the split."""
        s = torch.zeros(3, dtype=torch.float64)
        s2 = torch.zeros(3, dtype=torch.float64)
        n = 0
        for im in self.images:
            x = im.double().div(255).flatten(1)
            s += x.sum(1)
            s2 += (x * x).sum(1)
            n += x.shape[1]
        mean = s / n
        std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())


@dataclass(frozen=True)
class DataSummary:
    """What the automatic training defaults look at (resnetkit.train.seg_defaults): sizes and classes."""

    root: str
    n_images: int
    median_side: int  # the median of the images' shorter sides, pixels
    min_side: int  # the smallest shorter side, and the image that has it
    smallest: str
    num_classes: int
    class_freq: tuple[float, ...]  # each class's share of the labelled pixels of a sample of masks


def summarize(data: SegSet, sample: int = 256) -> DataSummary:
    """Sizes of every image (cheap: shapes only) and class pixel frequencies over `sample` masks evenly
    spread over the split, so a large set costs no more than a small one."""
    sides = [min(m.shape) for m in data.masks]
    order = sorted(range(len(sides)), key=sides.__getitem__)
    counts = torch.zeros(data.num_classes + 1, dtype=torch.float64)  # the last bin: IGNORE, dropped
    step = max(1, len(data) // sample)
    for m in data.masks[::step]:
        counts += torch.bincount(m.flatten().long().clamp(max=data.num_classes), minlength=data.num_classes + 1)
    labelled = counts[:-1].sum().clamp_min(1)
    return DataSummary(str(data.info.get("root", "")), len(data), sides[order[len(order) // 2]], sides[order[0]],
                       data.names[order[0]], data.num_classes, tuple((counts[:-1] / labelled).tolist()))


# ------------------------------------------------------------------------------------------------ reading

def read_image(path: Path) -> torch.Tensor:
    """An image file -> (3, H, W) uint8."""
    a = np.asarray(open_image(path, "RGB"), dtype=np.uint8)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def read_mask(path: Path, num_classes: int) -> torch.Tensor:
    """A mask PNG -> (H, W) uint8 of class indices and IGNORE.

    Palette ('P') and greyscale ('L') PNGs hold the index itself; an RGB mask is decoded through VOC's
    colour map. Any value that is neither a class (0..num_classes-1) nor 255 is an error naming the file.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L", "I", "I;16", "I;16L", "I;16B"):  # class indices, not intensities: no scaling
                a = np.asarray(im).astype(np.int64)
            elif mode in ("RGB", "RGBA"):
                a = _decode_colours(np.asarray(im.convert("RGB")), path)
            else:
                raise DataError(f"{path}: mask mode {mode!r}; save masks as palette (P) or greyscale PNGs")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable mask ({e})") from e
    bad = np.unique(a[(a != IGNORE) & ((a < 0) | (a >= num_classes))])
    if bad.size:
        shown = ", ".join(map(str, bad[:5].tolist()))
        raise DataError(f"{path}: palette index {shown} outside the {num_classes} classes (0..{num_classes - 1}) "
                        f"and the ignore label {IGNORE}; fix the mask or list the classes in classes.txt")
    return torch.from_numpy(a.astype(np.uint8))


def _decode_colours(rgb: np.ndarray, path: Path) -> np.ndarray:
    pal = voc_palette().astype(np.int64)
    key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in enumerate(key)}
    flat = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(flat, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in lut]
    if unknown:
        v = unknown[0]
        raise DataError(f"{path}: colour {(v >> 16, (v >> 8) & 255, v & 255)} is not in VOC's colour map; save "
                        "masks as palette PNGs of class indices")
    return np.array([lut[v] for v in values.tolist()], dtype=np.int64)[inverse].reshape(flat.shape)


def class_names_for(root: Path) -> list[str]:
    f = root / "classes.txt"
    if f.is_file():
        names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if not names:
            raise DataError(f"{f}: empty; list one class name per line, background first")
        return names
    return list(VOC_CLASSES)


def voc_root(root: Path) -> Path | None:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    return None


def _pair(img: Path, mask: Path, num_classes: int, listed: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """An image and its mask; `listed`: " (listed in FILE)" when a split file named the image."""
    if not img.is_file():
        raise MissingFileError(f"{img}: no such image{listed}; add the image or remove its line")
    if not mask.is_file():
        raise MissingFileError(f"{mask}: no such mask (for {img.name}); add the mask or remove the image")
    x, m = read_image(img), read_mask(mask, num_classes)
    if tuple(x.shape[1:]) != tuple(m.shape):
        raise DataError(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} but its image {img} is "
                        f"{x.shape[2]}x{x.shape[1]} (width x height); save the mask at its image's size")
    return x, m


def load_split(root: str | Path, split: str) -> SegSet:
    """Read split `split` ('train', 'val') of a VOC-layout or pairs-layout folder into memory."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such directory; pass a VOC-layout folder (JPEGImages, SegmentationClass, "
                        "ImageSets/Segmentation) or ROOT/{train,val}/{images,masks}")
    names = class_names_for(root)
    voc = voc_root(root)
    if voc is not None:
        split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise MissingFileError(f"{split_file}: no such split file; list the {split} image ids there, one per line")
        ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
        if not ids:
            raise DataError(f"{split_file}: lists no images")
        names = class_names_for(voc) if voc != root and not (root / "classes.txt").is_file() else names
        pairs = [_pair(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png", len(names),
                       f" (listed in {split_file})") for i in ids]
    else:
        img_dir, mask_dir = root / split / "images", root / split / "masks"
        if not img_dir.is_dir():
            raise DataError(f"{root}: neither a VOC layout (no JPEGImages/) nor a pairs layout (no {img_dir})")
        files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{img_dir}: no images")
        ids = [p.stem for p in files]
        pairs = [_pair(p, mask_dir / f"{p.stem}.png", len(names)) for p in files]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    return SegSet(images, masks, ids, names, info={"root": str(root), "split": split})


# ------------------------------------------------------------------------------------------------ augmentation

@dataclass(frozen=True)
class JointAugment:
    """DeepLab's training transform on (image, mask) pairs: random scale, pad to the crop size (image with
    the mean, i.e. 0 after normalisation; mask with the ignore label), random crop, horizontal flip.

    `sample` draws the parameters for a whole batch from one generator (seeded by (seed, epoch, step)),
    so the batch a resumed run sees is the one the uninterrupted run saw.
    """

    crop: int = 321
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"scale": torch.rand(n, generator=generator, dtype=torch.float64),
                "oy": torch.randint(0, 1 << 30, (n,), generator=generator),
                "ox": torch.randint(0, 1 << 30, (n,), generator=generator),
                "flip": torch.randint(0, 2, (n,), generator=generator)}

    def apply_one(self, x: torch.Tensor, m: torch.Tensor, scale: float, oy: int, ox: int, flip: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised float (3, H, W), m: (H, W) uint8 -> (3, crop, crop), (crop, crop) int64."""
        h, w = m.shape
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            m = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(torch.uint8)
        ph, pw = max(0, self.crop - nh), max(0, self.crop - nw)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            m = F.pad(m, (0, pw, 0, ph), value=IGNORE)
        y0, x0 = oy % (x.shape[1] - self.crop + 1), ox % (x.shape[2] - self.crop + 1)
        x, m = x[:, y0:y0 + self.crop, x0:x0 + self.crop], m[y0:y0 + self.crop, x0:x0 + self.crop]
        if flip:
            x, m = x.flip(-1), m.flip(-1)
        return x, m.long()

    def __call__(self, images: list[torch.Tensor], masks: list[torch.Tensor], params: dict,
                 mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and masks -> normalised (N, 3, crop, crop) float and (N, crop, crop) int64 targets."""
        xs, ms = [], []
        for k, (im, m) in enumerate(zip(images, masks)):
            s = self.min_scale + (self.max_scale - self.min_scale) * float(params["scale"][k])
            x = normalize_one(im, mean, std)
            x, m = self.apply_one(x, m, s, int(params["oy"][k]), int(params["ox"][k]),
                                  self.flip and bool(params["flip"][k]))
            xs.append(x)
            ms.append(m)
        return torch.stack(xs), torch.stack(ms)


def normalize_one(im: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (x / 255 - mean) / std."""
    return (im.float() / 255 - mean[:, None, None]) / std[:, None, None]


def palette_png(mask: np.ndarray) -> Image.Image:
    """(H, W) uint8 class indices -> a 'P' image with VOC's palette (the format of SegmentationClass)."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    im.putpalette(voc_palette().flatten().tolist())
    return im
