"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

An IDX file is a big-endian header — two zero bytes, a type code, the number of dimensions, one
uint32 per dimension — followed by the array. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from resnetkit.errors import DataError

# IDX type code -> numpy dtype (big-endian, as the format stores them).
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or `.gz`) into a numpy array of its stored shape."""
    path = Path(path)
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        raw = gzip.open(path, "rb").read() if gzipped else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); delete it so it is fetched again") from e
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); expected MNIST-style idx data")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or corrupt IDX file ({len(raw) - header} data bytes, "
                        f"header says {expected}); delete it so it is fetched again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
