"""Image files read lazily by DataLoader workers: decode, random resized crop, flip, uint8 batches.

Nothing is cached: a split is a list of file names and labels (numpy arrays, so forked workers share
them without copying), and each worker decodes the batches it is given. The work per image:

  train  RandomResizedCrop (Szegedy et al. 2015; torchvision's scale 0.08-1, ratio 3/4-4/3) + flip,
         optionally TrivialAugmentWide / RandAugment and RandomErasing (torchvision transforms.v2)
  eval   resize the shorter side to `eval_resize`, center crop `eval_crop` (torchvision's 256/224)

The crop box is computed on the file's header size first, so that a JPEG can be decoded at 1/2, 1/4
or 1/8 of its size in the DCT domain (PIL's `draft`) whenever the box still has at least the output's
resolution there, and the crop and resize are one PIL `resize(box=...)`. Images stay uint8 until they
are on the training device, where they are normalised.

Every random draw of an image comes from a seed derived from (seed, epoch, batch, image index), so a
batch does not depend on the number of workers or processes, and a resumed run decodes exactly what
the uninterrupted run decoded. An unreadable image is replaced in training by the next readable image
of the split (same draws) and named in the log, or is an error with strict=True; evaluation skips it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import random
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resnetkit._helpers import to_mode
from resnetkit.data import folder
from resnetkit.data.loader import epoch_batches, shard
from resnetkit.errors import DataError
from resnetkit.weights import Preprocessing
from resnetkit.weights.presets import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
MAX_TRIES = 64  # consecutive unreadable images before a split is declared unreadable


@dataclass
class FileList:
    """A split as file names (numpy bytes, shared by forked workers without copy-on-write) and labels."""

    files: np.ndarray  # (N,) dtype S: UTF-8 paths
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    root: str = ""

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return self.files[i].decode("utf-8", "surrogateescape")

    def subset(self, n: int) -> FileList:
        return replace(self, files=self.files[:n], labels=self.labels[:n])


def file_list(items: list[tuple[Path, int]], class_names: list[str], root: str | Path = "") -> FileList:
    paths = [str(p).encode("utf-8", "surrogateescape") for p, _ in items]
    return FileList(np.array(paths, dtype=bytes), np.array([y for _, y in items], dtype=np.int64),
                    list(class_names), str(root))


def list_folder(root: str | Path, classes: list[str] | None = None) -> FileList:
    """ROOT/CLASS/IMAGE as a FileList; `classes` fixes the label order (a val split uses train's)."""
    root = Path(root)
    items, found = folder.list_images(root)
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root}: class folders {extra} are not among the training classes")
        index = {c: i for i, c in enumerate(classes)}
        items, found = [(p, index[found[y]]) for p, y in items], classes
    return file_list(items, found, root)


# -- per-image randomness and geometry ---------------------------------------------------------------


def image_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, batch, image index): stable across runs, workers and processes."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rrc_box(w: int, h: int, rng: random.Random, scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, right, bottom): torchvision's algorithm (10 tries at a random
    area fraction and log-uniform aspect ratio, then the central crop at the nearest allowed ratio)."""
    area, log_lo, log_hi = w * h, math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            return left, top, left + cw, top + ch
    if w / h < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def center_box(w: int, h: int, resize: int | None, crop: int) -> tuple[float, float, float, float]:
    """The region of the full image that `resize the shorter side to resize, center crop crop` keeps
    (resize None: the whole image, squashed to crop x crop)."""
    if resize is None:
        return 0.0, 0.0, float(w), float(h)
    side = crop * min(w, h) / resize  # the crop's side in the file's pixels
    sw, sh = min(side, w), min(side, h)
    return (w - sw) / 2, (h - sh) / 2, (w + sw) / 2, (h + sh) / 2


def decode_box(path: str, mode: str, plan, draft: bool = True) -> Image.Image:
    """Decode `path` as `mode`, cropped to `plan(w, h) -> (box, (out_w, out_h))` and resized to the output.

    For a JPEG whose box is at least twice the output in both directions, the decoder scales by 1/2, 1/4
    or 1/8 in the DCT domain (PIL draft) while the box keeps at least the output's resolution. An unreadable
    file or a decompression bomb raises a DataError naming it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not just warn
            with Image.open(path) as im:
                w, h = im.size
                box, out = plan(w, h)
                reduce = min((box[2] - box[0]) / out[0], (box[3] - box[1]) / out[1])
                if draft and im.format == "JPEG" and reduce >= 2:
                    im.draft(mode if im.mode in ("RGB", "L") else None, (math.ceil(w / reduce), math.ceil(h / reduce)))
                    fx, fy = im.size[0] / w, im.size[1] / h
                    box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
                return to_mode(im, mode).resize(out, Image.BILINEAR, box=box)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ZeroDivisionError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


# -- transforms (picklable: they travel to the workers) ----------------------------------------------


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop to `crop`, flip, then the optional policies on the uint8 (C, crop, crop) tensor."""

    crop: int = 224
    channels: int = 3
    flip: bool = True
    auto_augment: str = "none"
    random_erase: float = 0.0
    fill: tuple[int, ...] = (124, 116, 104)  # RandomErasing's value: the mean colour (0 after normalising)
    draft: bool = True
    scale: tuple[float, float] = RRC_SCALE

    def __call__(self, path: str, seed: int) -> torch.Tensor:
        rng = random.Random(seed)
        plan = lambda w, h: (rrc_box(w, h, rng, self.scale), (self.crop, self.crop))  # noqa: E731
        im = decode_box(path, "L" if self.channels == 1 else "RGB", plan, self.draft)
        if self.flip and rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = _chw(im)
        if self.auto_augment != "none" or self.random_erase > 0:
            x = self._policies(x, seed)
        return x

    def _policies(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        from torchvision.transforms import v2  # noqa: PLC0415  (only when a policy is on)

        # v2 draws from torch's global RNG: seed it per image, and give the caller's state back.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.auto_augment == "trivialaugment":
                x = v2.TrivialAugmentWide()(x)
            elif self.auto_augment == "randaugment":
                x = v2.RandAugment()(x)
            if self.random_erase > 0:
                x = v2.RandomErasing(p=self.random_erase, value=list(self.fill))(x)
        return x


@dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to `resize` and center crop `crop` (resize None: squash to crop x crop)."""

    crop: int = 224
    resize: int | None = 256
    channels: int = 3
    draft: bool = True

    def __call__(self, path: str, seed: int = 0) -> torch.Tensor:
        plan = lambda w, h: (center_box(w, h, self.resize, self.crop), (self.crop, self.crop))  # noqa: E731
        return _chw(decode_box(path, "L" if self.channels == 1 else "RGB", plan, self.draft))


def _chw(im: Image.Image) -> torch.Tensor:
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy())  # (C, H, W)


# -- the split and its batches -----------------------------------------------------------------------


class StreamedSplit:
    """What every streamed split (StreamSet here, shards.ShardSet) derives from its transforms: the class count,
    channels, image size and the preprocessing a weights file records. A subclass supplies `class_names`,
    `eval_transform`, `mean` and `std`, and the batch methods the trainer and evaluate call (train_batches,
    first_batch, eval_batches, subset)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self.eval_transform.channels

    @property
    def size(self) -> tuple[int, int]:
        return self.eval_transform.crop, self.eval_transform.crop

    def preprocessing(self) -> Preprocessing:
        e = self.eval_transform
        return Preprocessing(size=self.size, mean=tuple(self.mean), std=tuple(self.std),
                             channel_order="L" if e.channels == 1 else "RGB", resize=e.resize,
                             crop=e.crop if e.resize is not None else None)


@dataclass
class StreamSet(StreamedSplit):
    """A split read from files on demand: what the trainer and evaluate need of a dataset, like ImageSet."""

    data: FileList
    train_transform: TrainTransform
    eval_transform: EvalTransform
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    strict: bool = False
    workers: int = 4
    info: dict = field(default_factory=dict)  # kind ("folder", "imagenet"), background (1001 classes)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels

    def subset(self, n: int) -> StreamSet:
        return replace(self, data=self.data.subset(n))

    def loader(self, keys: list, train: bool) -> Iterator[dict]:
        """Batches for `keys`, each (image indices, (seed, epoch, batch) or None for evaluation), decoded by
        the workers in order: {"idx", "x" uint8 (B, C, H, W), "y"}. Unreadable images are named in the log
        (train: replaced by the next readable image; eval: dropped), or raise a DataError when strict."""
        reader = BatchReader(self.data, self.train_transform if train else self.eval_transform, train, self.strict)
        # Batches do not depend on the worker count: use no more workers than cores or batches.
        workers = min(self.workers, len(os.sched_getaffinity(0)), len(keys))
        loader = torch.utils.data.DataLoader(reader, batch_size=None, sampler=keys, num_workers=workers,
                                             worker_init_fn=_one_thread, pin_memory=torch.cuda.is_available(),
                                             prefetch_factor=4 if workers else None,
                                             multiprocessing_context=worker_context(workers))
        yield from drain(loader, "image")

    def train_batches(self, seed: int, epoch: int, start: int, global_batch: int, rank: int, world: int,
                      accum: int) -> Iterator[dict]:
        """This process's micro-batches of the epoch from batch `start`: exactly the trainer's global batches
        (resnetkit.data.loader.epoch_batches) cut into world x accum parts, this rank's `accum` in turn."""
        parts = world * accum
        keys = [(shard(idx, rank * accum + m, parts), (seed, epoch, i))
                for i, idx in epoch_batches(len(self), global_batch, seed, epoch, start) for m in range(accum)]
        return self.loader(keys, train=True)

    def first_batch(self, n: int) -> dict:
        """The first n images, decoded here with training draws: a probe batch (e.g. to time a step)."""
        keys = [(torch.arange(min(n, len(self))), (0, -1, 0))]
        return next(replace(self, workers=0).loader(keys, train=True))

    def eval_batches(self, part: int, parts: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation batches of this process's contiguous slice (part of parts): (uint8 (B, C, H, W), labels)."""
        lo, hi = len(self) * part // parts, len(self) * (part + 1) // parts
        keys = [(torch.arange(i, min(i + batch_size, hi)), None) for i in range(lo, hi, batch_size)]
        for item in self.loader(keys, train=False):
            yield item["x"], item["y"]


def drain(loader, what: str) -> Iterator[dict]:
    """The items a DataLoader of workers yields: a worker's error (strict mode, a bad file) is raised here as a
    DataError, and every sample a worker skipped is named in the log."""
    skipped = 0
    for item in loader:
        if item["error"]:
            raise DataError(item["error"])
        for bad in item["bad"]:
            skipped += 1
            log.warning("skipped unreadable %s %d: %s", what, skipped, bad)
        yield item


def worker_context(workers: int) -> str | None:
    """How DataLoader workers start: forked (fast) in a single process, spawned under torch.distributed,
    whose process group runs threads of its own: a worker forked while one of them held a lock can wait on
    it for ever (seen as a hung two-process gloo run)."""
    return "spawn" if workers and torch.distributed.is_available() and torch.distributed.is_initialized() else None


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # a worker decodes; torch's intra-op pool would only oversubscribe the cores
    if sys.platform.startswith("linux"):  # die with the trainer: a SIGKILLed trainer must not leave workers
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (linux/prctl.h)


class BatchReader(torch.utils.data.Dataset):
    """Map-style over batch keys: reader[(idx, (seed, epoch, batch) or None)] -> one decoded batch."""

    def __init__(self, data: FileList, transform, train: bool, strict: bool):
        self.data, self.transform, self.train, self.strict = data, transform, train, strict

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> dict:
        idx, where = key
        images, labels, bad = [], [], []
        for j in idx.tolist():
            seed = image_seed(*where, j) if where is not None else 0
            try:
                x, y = self._read(j, seed, bad)
            except DataError as e:
                return {"idx": idx, "x": torch.zeros(0), "y": torch.zeros(0), "bad": bad, "error": str(e)}
            if x is not None:
                images.append(x)
                labels.append(y)
        x = torch.stack(images) if images else torch.zeros((0, self.transform.channels, self.transform.crop,
                                                            self.transform.crop), dtype=torch.uint8)
        return {"idx": idx, "x": x, "y": torch.tensor(labels, dtype=torch.int64), "bad": bad, "error": ""}

    def _read(self, j: int, seed: int, bad: list[str]) -> tuple[torch.Tensor | None, int]:
        """Image j (train: or the next readable one, with j's draws); (None, -1) for an unreadable eval image."""
        n = len(self.data)
        for k in range(min(MAX_TRIES, n)):
            i = (j + k) % n
            try:
                return self.transform(self.data.path(i), seed), int(self.data.labels[i])
            except DataError as e:
                if self.strict:
                    raise DataError(f"{e}; remove it, or skip such images (strict=False)") from None
                bad.append(str(e))
                if not self.train:
                    return None, -1
        raise DataError(f"{self.data.root}: {min(MAX_TRIES, n)} images in a row could not be read (from "
                        f"{self.data.path(j)}); is this the right folder?")
