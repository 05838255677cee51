"""The ILSVRC-2012 layout: train/nXXXXXXXX/*.JPEG and val/ (flat with a ground-truth file, or in class folders).

Labels are indices into the standard 1000 classes, ordered by sorted WordNet id (imagenet_synsets.txt,
the order torchvision, timm and Keras use, and our imagenet_classes.txt); a model with 1001 outputs
(TF-slim's, class 0 = background) gets every label + 1 (`with_background`).

A flat val/ takes its labels from, in this order:
  LOC_val_solution.csv   (Kaggle's: ImageId,PredictionString "nXXXXXXXX x y x y ...")
  ILSVRC2012_validation_ground_truth.txt with the devkit's meta.mat (1-based ILSVRC2012_IDs, one per image
      in file-name order; meta.mat maps them to WordNet ids and needs scipy), or, instead of meta.mat, a
      synsets file listing the WordNet id of ILSVRC2012_ID 1, 2, ... one per line (ILSVRC2012_synsets.txt)
searched in ROOT, ROOT/val and ROOT/devkit/data (or ILSVRC2012_devkit_t12/data).
"""

from __future__ import annotations

import csv
import dataclasses
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from resnetkit.data.folder import IMAGE_SUFFIXES
from resnetkit.data.stream import FileList, file_list
from resnetkit.errors import DataError, MissingFileError
from resnetkit.weights import imagenet_class_names

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
SOLUTION = "LOC_val_solution.csv"
ID_ORDER = ("meta.mat", "ILSVRC2012_synsets.txt")


@cache
def synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (sorted)."""
    text = resources.files("resnetkit.data").joinpath("imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(text.split())


def _index() -> dict[str, int]:
    return {s: i for i, s in enumerate(synsets())}


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(d: Path, where: str) -> list[tuple[Path, int]]:
    index = _index()
    dirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in dirs if p.name not in index]
    if unknown:
        raise DataError(f"{d}: folders {unknown[:5]} are not ILSVRC-2012 synsets (nXXXXXXXX); {where}")
    items = [(p, index[c.name]) for c in dirs for p in _images(c)]
    if not items:
        raise DataError(f"{d}: no images in its synset folders")
    return items


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for d in (root, root / "val", root / "devkit" / "data", root / "ILSVRC2012_devkit_t12" / "data", root.parent):
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _ids_to_synsets(path: Path) -> list[str]:
    """WordNet id of ILSVRC2012_ID 1, 2, ... from the devkit's meta.mat or a one-per-line synsets file."""
    if path.suffix != ".mat":
        return path.read_text(encoding="utf-8").split()
    try:
        from scipy.io import loadmat  # noqa: PLC0415  (optional: only the devkit's .mat needs it)
    except ImportError:
        raise DataError(f"{path}: reading the devkit's meta.mat needs scipy (pip install scipy); or put "
                        f"{SOLUTION}, or an ILSVRC2012_synsets.txt (WordNet id of ILSVRC2012_ID 1, 2, ...) next "
                        "to it") from None
    try:
        rows = loadmat(str(path), squeeze_me=True)["synsets"]
        pairs = sorted((int(r["ILSVRC2012_ID"]), str(r["WNID"])) for r in rows)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"{path}: not the devkit's meta.mat ({e})") from None
    return [w for i, w in pairs if 1 <= i <= 1000]


def _flat_val(root: Path, val: Path) -> list[tuple[Path, int]]:
    index, files = _index(), _images(val)
    if not files:
        raise DataError(f"{val}: no images")
    solution = _find(root, (SOLUTION,))
    if solution is not None:
        truth = {}
        with open(solution, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    truth[row["ImageId"]] = index[row["PredictionString"].split()[0]]
                except (KeyError, IndexError, AttributeError):
                    raise DataError(f"{solution}: row {row} is not 'ImageId,nXXXXXXXX x y x y ...'") from None
        missing = [p.name for p in files if p.stem not in truth]
        if missing:
            raise DataError(f"{solution}: no label for {len(missing)} images of {val}, e.g. {missing[:3]}")
        return [(p, truth[p.stem]) for p in files]
    gt = _find(root, (GROUND_TRUTH,))
    if gt is None:
        raise MissingFileError(f"{val} is flat but its ground truth was not found: put {SOLUTION}, or {GROUND_TRUTH} "
                               f"with the devkit's meta.mat, in {root} (or {root}/devkit/data), or sort val/ into "
                               "synset folders")
    order = _find(gt.parent, ID_ORDER) or _find(root, ID_ORDER)
    if order is None:
        raise MissingFileError(f"{gt}: the devkit's meta.mat (or ILSVRC2012_synsets.txt) must sit next to it to map "
                               "ILSVRC2012_IDs to synsets")
    wnids = _ids_to_synsets(order)
    try:
        labels = [index[wnids[int(t) - 1]] for t in gt.read_text(encoding="utf-8").split()]
    except (ValueError, IndexError, KeyError) as e:
        raise DataError(f"{gt}: not 1-based ILSVRC2012_IDs as {order.name} numbers them ({e})") from None
    if len(labels) != len(files):
        raise DataError(f"{gt} has {len(labels)} labels but {val} has {len(files)} images")
    return list(zip(files, labels))


def list_imagenet(root: str | Path) -> tuple[FileList, FileList]:
    """(train, val) FileLists of an ILSVRC-2012 folder, labelled with the 1000 standard class indices."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise MissingFileError(f"{root}: no train/ folder; expected the ILSVRC-2012 layout train/nXXXXXXXX/*.JPEG, "
                               "val/")
    names = imagenet_class_names(1000)
    train = file_list(_class_folders(root / "train", "expected train/nXXXXXXXX/*.JPEG"), names, root / "train")
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise MissingFileError(f"{root}: no val/ folder")
    in_folders = any(p.is_dir() for p in val_dir.iterdir())
    items = _class_folders(val_dir, "expected val/ flat or in synset folders") if in_folders else \
        _flat_val(root, val_dir)
    return train, file_list(items, names, val_dir)


def with_background(data: FileList) -> FileList:
    """TF-slim's 1001 classes: 'background' first, so every label moves up by one."""
    if len(data.class_names) != 1000:
        raise DataError(f"{data.root}: only the 1000 ImageNet classes have a 1001-class (background) form")
    return dataclasses.replace(data, labels=data.labels + np.int64(1), class_names=imagenet_class_names(1001))
