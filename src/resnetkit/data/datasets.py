"""Named datasets held in memory as uint8 tensors, and where to find their files.

Lookup order for file-based datasets: --data-dir if given; else the Debian package's folder (for
Fashion-MNIST: `apt-get install dataset-fashion-mnist`); else the cache ($RESNETKIT_DATA/<name> or
~/.cache/resnetkit/data/<name>); else download into the cache, checking md5s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnetkit import download
from resnetkit._helpers import did_you_mean
from resnetkit.data import cifar, folder, idx
from resnetkit.errors import ConfigError, DataError, MissingFileError
from resnetkit.weights import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """A split in memory: images (N, C, H, W) uint8, labels (N,) int64, and how to normalise them."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Augmentation that suits the data: pad-and-crop by `pad` pixels, and whether mirroring is valid.
    pad: int = 0
    flip: bool = False
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, n: int) -> ImageSet:
        """The first n images (a fixed, not random, subset; for quick runs)."""
        return ImageSet(self.images[:n], self.labels[:n], self.class_names, self.mean, self.std,
                        self.pad, self.flip, self.info)

    def eval_batches(self, part: int, parts: int, batch_size: int):
        """Evaluation batches of this process's contiguous slice (part of parts): (uint8 (B, C, H, W), labels),
        as the streamed sets give them."""
        lo, hi = len(self) * part // parts, len(self) * (part + 1) // parts
        for i in range(lo, hi, batch_size):
            yield self.images[i:min(i + batch_size, hi)], self.labels[i:min(i + batch_size, hi)]

    def preprocessing(self) -> Preprocessing:
        """What predict must do to a new image: resize, channel count, normalisation constants."""
        return Preprocessing(size=self.size, mean=self.mean, std=self.std,
                             channel_order="L" if self.in_chans == 1 else "RGB")


def _set(images: np.ndarray, labels: np.ndarray, names, mean, std, pad, flip, source: str = "") -> ImageSet:
    # Checked here, before any training starts: a bad label would otherwise surface as a CUDA assert or a
    # silently wrong loss many minutes later.
    where = f"{source}: " if source else ""
    if len(images) != len(labels):
        raise DataError(f"{where}{len(images)} images but {len(labels)} labels")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        bad = sorted({int(v) for v in np.unique(labels) if not 0 <= v < len(names)})[:5]
        raise DataError(f"{where}labels {bad} outside the {len(names)} classes (0..{len(names) - 1})")
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels).long(),
                    list(names), tuple(mean), tuple(std), pad, flip)


# ---------------------------------------------------------------------------------------------
# MNIST-style idx datasets

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")

# name -> (title, download base, md5 of each .gz in IDX_FILES order, system folder, class names,
#          mean, std, flip is valid). md5s are those torchvision checks; mean/std are of the train split.
IDX_DATASETS = {
    "fashion_mnist": ("Fashion-MNIST", _FASHION_URL,
                      ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                       "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                      "/usr/share/datasets/fashion-mnist",
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot"), (0.2860,), (0.3530,), True),
    "mnist": ("MNIST", _MNIST_URL,
              ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
               "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
              "/usr/share/datasets/mnist", tuple(str(i) for i in range(10)), (0.1307,), (0.3081,), False),
}


def cache_dir(name: str) -> Path:
    root = os.environ.get("RESNETKIT_DATA")
    return Path(root) / name if root else Path.home() / ".cache" / "resnetkit" / "data" / name


def _find_idx_file(folder_: Path, stem: str) -> Path | None:
    for candidate in (folder_ / f"{stem}.gz", folder_ / stem, folder_ / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(name: str, data_dir: str | None) -> tuple[Path, list[Path]]:
    """Locate the four idx files, downloading them into the cache as a last resort."""
    title, base, md5s, system_dir, *_ = IDX_DATASETS[name]
    if data_dir is not None:
        folders = [Path(data_dir)]
        if not folders[0].is_dir():
            raise MissingFileError(f"data_dir {data_dir}: no such directory")
    else:
        folders = [Path(system_dir), cache_dir(name)]
    for f in folders:
        files = [_find_idx_file(f, s) for s in IDX_FILES]
        if all(files):
            return f, files
    if data_dir is not None:
        raise MissingFileError(f"{title}: the four idx files ({', '.join(s + '.gz' for s in IDX_FILES)}) "
                        f"are not all in data_dir {data_dir}")
    target = cache_dir(name)
    try:
        files = [download.download(base + s + ".gz", target / f"{s}.gz", md5=md5) for s, md5 in zip(IDX_FILES, md5s)]
    except download.DownloadError as e:
        apt = "run `apt-get install dataset-fashion-mnist`, or " if name == "fashion_mnist" else ""
        raise MissingFileError(f"{title} not found and the download failed ({e}); {apt}put "
                        f"the four files ({', '.join(s + '.gz' for s in IDX_FILES)}) in {target}, or "
                        "pass data_dir (CLI: --data-dir)") from e
    return target, files


def load_idx_dataset(name: str, data_dir: str | None = None) -> tuple[ImageSet, ImageSet]:
    title, _, _, _, names, mean, std, flip = IDX_DATASETS[name]
    where, files = _idx_folder(name, data_dir)
    log.debug("reading %s from %s", name, where)
    x_train, y_train, x_test, y_test = (idx.read_idx(f) for f in files)
    # 28 px images: pad 2 keeps the paper's pad/size ratio (4 for 32 px) close.
    return (_set(x_train[:, None], y_train, names, mean, std, 2, flip, f"{title} train ({where})"),
            _set(x_test[:, None], y_test, names, mean, std, 2, flip, f"{title} test ({where})"))


# ---------------------------------------------------------------------------------------------
# CIFAR

CIFAR = {
    # name -> (url, md5, extracted folder, train files, test files, meta file, label key, names key,
    #          mean, std). mean/std: per-channel statistics of the training images.
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names",
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names",
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_folder(name: str, data_dir: str | None) -> Path:
    url, md5, sub, train_files, *_ = CIFAR[name]
    roots = [Path(data_dir)] if data_dir is not None else [cache_dir(name)]
    if data_dir is not None and not roots[0].is_dir():
        raise MissingFileError(f"data_dir {data_dir}: no such directory")
    for r in roots:
        for f in (r / sub, r):
            if (f / train_files[0]).is_file():
                return f
    if data_dir is not None:
        raise MissingFileError(f"{name}: {sub}/{train_files[0]} not found in data_dir {data_dir}; extract "
                        f"{url.rsplit('/', 1)[1]} there")
    target = cache_dir(name)
    archive = target / url.rsplit("/", 1)[1]
    try:
        download.download(url, archive, md5=md5)
    except download.DownloadError as e:
        raise MissingFileError(f"{name} not found and the download failed ({e}); download "
                               f"{url} and extract it in {target}, or pass data_dir") from e
    download.safe_extract_tar(archive, target)
    return target / sub


def load_cifar(name: str, data_dir: str | None = None) -> tuple[ImageSet, ImageSet]:
    *_, train_files, test_files, meta, label_key, names_key, mean, std = CIFAR[name]
    where = _cifar_folder(name, data_dir)
    names = (cifar.read_names(where / meta, names_key) if (where / meta).is_file()
             else [str(i) for i in range(10 if name == "cifar10" else 100)])
    x_tr, y_tr = cifar.read_split([where / f for f in train_files], label_key)
    x_te, y_te = cifar.read_split([where / f for f in test_files], label_key)
    return (_set(x_tr, y_tr, names, mean, std, 4, True, f"{name} train ({where})"),
            _set(x_te, y_te, names, mean, std, 4, True, f"{name} test ({where})"))


# ---------------------------------------------------------------------------------------------
# scikit-learn digits and image folders


def load_digits() -> tuple[ImageSet, ImageSet]:
    """sklearn's 8x8 digits (1797 images, values 0..16): a fixed 80/20 split (permutation seed 0)."""
    from sklearn.datasets import load_digits as sk_digits  # on purpose: sklearn adds 0.6 s to every import

    d = sk_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(0).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    mean, std = channel_stats(x[train])
    names = [str(i) for i in range(10)]
    return (_set(x[train], y[train], names, mean, std, 1, False), _set(x[test], y[test], names, mean, std, 1, False))


STATS_CHUNK = 1 << 18  # pixels counted per call: bounds the scratch memory of channel_stats (~2.3 MB)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std on the 0-1 scale of uint8 images (N, C, H, W).

    Exact, and without a float copy of the images: each channel's pixels are counted per value (0..255)
    a bounded slice at a time, and the moments are taken from the counts in integer arithmetic. This equals
    numpy's float64 `(x / 255).mean()` / `.std()` to rounding (~1e-16), at ~2.3 MB of scratch for any N.
    """
    n, c = x.shape[:2]
    counts = np.zeros((c, 256), dtype=np.int64)
    step = max(1, STATS_CHUNK // max(1, x[0, 0].size))
    for i in range(0, n, step):
        for ch in range(c):
            counts[ch] += np.bincount(x[i:i + step, ch].ravel(), minlength=256)
    values = np.arange(256, dtype=np.int64)
    mean, std = [], []
    for k in counts:
        m, s1, s2 = int(k.sum()), int(k @ values), int(k @ (values * values))  # int64: exact below 1.4e14 px
        mean.append(s1 / (255 * m))
        std.append(float(np.sqrt((m * s2 - s1 * s1) / (m * m * 255 * 255))))  # Python ints: no cancellation
    return tuple(mean), tuple(std)


def take_rows_in_place(x: np.ndarray, order: np.ndarray) -> None:
    """x[:] = x[order] for a permutation `order`, following its cycles with one row of scratch instead of a
    second copy of x."""
    done = np.zeros(len(order), dtype=bool)
    row = np.empty_like(x[0])
    for start in range(len(order)):
        if done[start]:
            continue
        row[...] = x[start]
        i = start
        while True:
            done[i] = True
            j = int(order[i])
            if j == start:
                x[i] = row
                break
            x[i] = x[j]
            i = j


def folder_splits(root: str | Path, val: str | None = None) -> tuple[Path, Path | None]:
    """(train folder, val folder or None for a fixed 90/10 split of the train folder) of an image folder:
    `val` if given, else ROOT/train with ROOT/val or ROOT/test when both exist, else ROOT alone."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise MissingFileError(f"{root}: no such directory; pass an ImageFolder layout ROOT/CLASS/IMAGE")
    if val is not None:
        if not Path(val).is_dir():
            raise MissingFileError(f"val_path {val}: no such directory; pass an ImageFolder layout VAL/CLASS/IMAGE")
        return root_p, Path(val)
    test_dir = next((root_p / s for s in ("val", "test") if (root_p / s).is_dir()), None)
    if (root_p / "train").is_dir() and test_dir is not None:
        return root_p / "train", test_dir
    return root_p, None


def split_90_10(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of the fixed 90/10 split of a folder without a val split (seed 0)."""
    perm = np.random.RandomState(0).permutation(n)
    n_test = max(1, n // 10)
    return perm[n_test:], perm[:n_test]


def load_image_folder(root: str, size: int, channels: int, strict: bool,
                      val: str | None = None) -> tuple[ImageSet, ImageSet]:
    """ROOT/train/CLASS/* and ROOT/{val,test}/CLASS/* if present (or the `val` folder), else a fixed 90/10
    split of ROOT."""
    train_dir, test_dir = folder_splits(root, val)
    if test_dir is not None:
        x_tr, y_tr, names = folder.read_folder(train_dir, size, channels, strict)
        x_te, y_te, _ = folder.read_folder(test_dir, size, channels, strict, classes=names)
    else:
        x, y, names = folder.read_folder(train_dir, size, channels, strict)
        tr, te = split_90_10(len(y))
        # Reordered in place, train rows first: x[tr] and x[te] would copy every image once more.
        order = np.concatenate([tr, te])
        take_rows_in_place(x, order)
        y = y[order]
        x_tr, y_tr, x_te, y_te = x[:len(tr)], y[:len(tr)], x[len(tr):], y[len(tr):]
    mean, std = channel_stats(x_tr)
    std = tuple(s + 1e-6 for s in std)
    pad = max(1, size // 8)
    return (_set(x_tr, y_tr, names, mean, std, pad, True), _set(x_te, y_te, names, mean, std, pad, True))


# ---------------------------------------------------------------------------------------------

ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "folder:PATH", "imagenet:PATH",
            "shards:PATTERN")  # as users type them


def load_dataset(spec, data_dir: str | None = None, *, image_size: int = 32, channels: int = 3,
                 strict: bool = False, val: str | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) in memory for a dataset name, `folder:PATH`, or a path to an ImageFolder directory
    (a string, or a resnetkit.data.sources.DataSpec already parsed).

    image_size / channels / strict / val (a separate validation folder) apply to image folders only;
    resnetkit.data.sources.load_classification also streams folders, imagenet: and shards: data.
    """
    kind, target = (spec.kind, spec.target) if hasattr(spec, "kind") else (None, spec)
    if kind == "folder" or (kind is None and (spec.startswith("folder:") or os.sep in spec or Path(spec).is_dir())):
        return load_image_folder(target.removeprefix("folder:") if kind is None else target, image_size, channels,
                                 strict, val)
    spec = target
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in IDX_DATASETS:
        return load_idx_dataset(name, data_dir)
    if name in CIFAR:
        return load_cifar(name, data_dir)
    if name == "digits":
        return load_digits()
    hint = did_you_mean(spec, DATASETS[:-3], "")
    raise ConfigError(f"unknown dataset {spec!r}; {hint + ' ' if hint else ''}choose one of {', '.join(DATASETS)}")
