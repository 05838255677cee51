"""CIFAR-10 / CIFAR-100 "python version" batches (https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are pickles. Unpickling runs arbitrary code, so we use an Unpickler that resolves only
the few numpy names an ndarray needs; anything else in the file is refused.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from resnetkit.errors import DataError

try:  # numpy >= 2 moved the internals; pickles written by numpy 1 still name numpy.core.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): a pure function.
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_batch(path: str | Path) -> dict:
    """Load one CIFAR batch as a dict with str keys (the files were written by Python 2: bytes keys)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR python batch (top level is {type(d).__name__}, not dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_split(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches into images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    images, labels = [], []
    for path in files:
        d = read_batch(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"{path}: CIFAR batch lacks 'data' or {label_key!r}; keys are {sorted(d)}")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_names(meta_path: Path, key: str) -> list[str]:
    names = read_batch(meta_path)[key]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
