"""Small MNIST-style idx sets the tests write themselves, so no test needs Fashion-MNIST on the machine."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from resnetkit.data.datasets import IDX_FILES


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of `a` (uint8 or int32): magic, one big-endian uint32 per dimension, the data."""
    a = np.asarray(a)
    if a.dtype != np.int32:
        a = a.astype(np.uint8)
    code = {np.uint8: 0x08, np.int32: 0x0C}[a.dtype.type]
    header = b"\x00\x00" + bytes([code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx_files(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True,
                    raw: dict[str, bytes] | None = None) -> Path:
    """Write the four files of IDX_FILES (stem -> array; `raw` stem -> bytes to write instead) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES:
        data = (raw or {}).get(stem) or idx_bytes(arrays[stem])
        (folder / (f"{stem}.gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return folder


def fashion_like(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """A Fashion-MNIST stand-in: scikit-learn's 8x8 digits upscaled into 28x28 items on a black background
    (what scenes.py cuts items from), labels 0-9 round robin, train and test items distinct."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = []
    for i in range(n_train + n_test):
        small = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
        canvas = np.zeros((28, 28), np.uint8)
        canvas[4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR))  # (20, 20) item, 4 px margin
        items.append(canvas)
    items = np.stack(items)
    labels = np.arange(n_train + n_test) % 10
    return write_idx_files(folder, {"train-images-idx3-ubyte": items[:n_train],
                                    "train-labels-idx1-ubyte": labels[:n_train],
                                    "t10k-images-idx3-ubyte": items[n_train:],
                                    "t10k-labels-idx1-ubyte": labels[n_train:]})
