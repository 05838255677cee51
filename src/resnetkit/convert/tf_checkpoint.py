"""Read TensorFlow checkpoints without TensorFlow (numpy only, no protobuf package).

Two on-disk formats are understood:

* **V2 tensor bundle** (``tf.train.Saver`` default since TF 1.x, and ``tf.train.Checkpoint``):
  ``<prefix>.index`` is a LevelDB-style sorted table whose ``""`` entry is a ``BundleHeaderProto`` and
  whose other entries are ``BundleEntryProto`` messages (dtype, shape, shard, offset, size, crc32c);
  the raw little-endian tensor bytes live in ``<prefix>.data-NNNNN-of-MMMMM``.
* **V1 "tensor slices" file** (``SaverDef.V1``, e.g. the original TF-slim ImageNet checkpoints
  ``resnet_v1_50.ckpt``): one sorted table whose ``""`` entry holds a ``SavedTensorSliceMeta`` (every
  tensor's name, shape, dtype and slices) and whose other entries are ``SavedSlice`` messages holding
  the data of one slice in a ``TensorProto`` (``float_val``, ``tensor_content``, ...). Tensors are
  reassembled from their slices. Sharded V1 sets (``<path>-00000-of-00002``, ...) are read whole.

What is checked (each failure is a :class:`CheckpointError` naming the file and the problem): the
table magic, block bounds, block types (a snappy-compressed block is reported, not decoded), file
sizes against each entry's ``offset + size``, the presence of every data shard, protobuf framing and
element counts, and -- when ``verify=True`` (the default) -- the masked CRC32C of every V2 tensor and
of every table block. CRC32C is computed with numpy (many lanes in parallel, combined in GF(2)); it
runs at a few hundred MB/s, so verification is on by default.

Partitioned (sliced) variables are reassembled in both formats. Tensors of unsupported dtypes
(strings, resources, variants, quantized types) are listed by :func:`list_variables`; reading one
raises :class:`CheckpointError`, and :func:`read_checkpoint` skips them with a :class:`UserWarning`
naming them (``strict=True`` raises instead). ``bfloat16`` tensors are returned as ``float32``
(exact); every other dtype is returned as the matching numpy dtype, in native byte order.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetkit.errors import CheckpointError

__all__ = ["CheckpointError", "CheckpointReader", "crc32c", "list_variables", "read_checkpoint"]


class _Corrupt(Exception):
    """Internal: a format violation; turned into a CheckpointError that names the file."""


# --------------------------------------------------------------------------------------------- dtypes

# TF DataType enum value -> (name, numpy dtype or None when unsupported).
_DTYPES: dict[int, tuple[str, str | None]] = {
    1: ("float32", "<f4"), 2: ("float64", "<f8"), 3: ("int32", "<i4"), 4: ("uint8", "u1"),
    5: ("int16", "<i2"), 6: ("int8", "i1"), 7: ("string", None), 8: ("complex64", "<c8"),
    9: ("int64", "<i8"), 10: ("bool", "?"), 11: ("qint8", None), 12: ("quint8", None),
    13: ("qint32", None), 14: ("bfloat16", "<u2"), 15: ("qint16", None), 16: ("quint16", None),
    17: ("uint16", "<u2"), 18: ("complex128", "<c16"), 19: ("float16", "<f2"), 20: ("resource", None),
    21: ("variant", None), 22: ("uint32", "<u4"), 23: ("uint64", "<u8"),
}


def _dtype_info(code: int) -> tuple[str, str | None]:
    if code > 100:  # reference types (DT_FLOAT_REF = 101, ...) store like their base type
        code -= 100
    return _DTYPES.get(code, (f"dtype#{code}", None))


def _finish(raw: np.ndarray, dtype_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Little-endian raw values -> a native-order array of the final dtype and shape."""
    if dtype_name == "bfloat16":
        out = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        out = raw.astype(raw.dtype.newbyteorder("="), copy=True)
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------- crc32c

_CRC_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8


def _make_tables() -> np.ndarray:
    t0 = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t0 = np.where(t0 & 1, (t0 >> 1) ^ np.uint32(_CRC_POLY), t0 >> 1).astype(np.uint32)
    tables = [t0]
    for _ in range(3):  # slice-by-4 tables
        prev = tables[-1]
        tables.append(((prev >> 8) ^ t0[prev & 0xFF]).astype(np.uint32))
    return np.stack(tables)


_T = _make_tables()
_T0_LIST = [int(v) for v in _T[0]]
_SMALL = 4096  # below this many bytes a plain Python loop is cheaper than the vectorized path
_LANES = 1 << 14  # parallel CRC lanes in the vectorized path


def _crc_loop(reg: int, data: bytes | memoryview) -> int:
    t = _T0_LIST
    for b in bytes(data):
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _op_tables(cols: np.ndarray) -> np.ndarray:
    """Byte lookup tables (4 x 256) applying the GF(2)-linear map whose images of bit i are cols[i]."""
    bits = ((np.arange(256, dtype=np.uint32)[:, None] >> np.arange(8, dtype=np.uint32)) & 1).astype(bool)
    out = np.empty((4, 256), dtype=np.uint32)
    for k in range(4):
        out[k] = np.bitwise_xor.reduce(np.where(bits, cols[8 * k: 8 * k + 8][None, :], np.uint32(0)), axis=1)
    return out


def _apply(tables: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (tables[0][v & 0xFF] ^ tables[1][(v >> 8) & 0xFF] ^ tables[2][(v >> 16) & 0xFF]
            ^ tables[3][v >> 24])


_BASIS = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
# _ZEROS_POW2[k]: byte tables of the linear map "feed 2**k zero bytes into the CRC register".
_ZEROS_POW2: list[np.ndarray] = [_op_tables((_T[0][_BASIS & 0xFF] ^ (_BASIS >> 8)).astype(np.uint32))]


def _zeros_pow2(k: int) -> np.ndarray:
    while len(_ZEROS_POW2) <= k:
        last = _ZEROS_POW2[-1]
        _ZEROS_POW2.append(_op_tables(_apply(last, _apply(last, _BASIS))))
    return _ZEROS_POW2[k]


def _crc_vector(reg: int, buf: np.ndarray, lanes: int, words: int) -> int:
    """CRC register after feeding buf (uint8, len = lanes * words * 4, both powers of two): every lane
    runs slice-by-4 over its own chunk, then chunks are combined pairwise in a tree, using
    crc(A || B) = zeros_|B|(crc(A)) ^ crc_from_0(B)."""
    w = np.ascontiguousarray(buf.view("<u4").reshape(lanes, words).T).astype(np.uint32, copy=False)
    r = np.zeros(lanes, dtype=np.uint32)
    r[0] = reg
    t0, t1, t2, t3 = _T
    for j in range(words):
        r ^= w[j]
        r = t3[r & 0xFF] ^ t2[(r >> 8) & 0xFF] ^ t1[(r >> 16) & 0xFF] ^ t0[r >> 24]
    k = (words * 4).bit_length() - 1
    while r.size > 1:
        r = _apply(_zeros_pow2(k), r[0::2]) ^ r[1::2]
        k += 1
    return int(r[0])


def _crc_register(reg: int, data) -> int:
    buf = np.frombuffer(data, dtype=np.uint8)
    pos = 0
    while buf.size - pos >= _SMALL:
        remaining = buf.size - pos
        lanes = _LANES
        while lanes > 1 and remaining < lanes * 64:
            lanes //= 2
        words = 1 << ((remaining // (lanes * 4)).bit_length() - 1)
        chunk = lanes * words * 4
        reg = _crc_vector(reg, buf[pos: pos + chunk], lanes, words)
        pos += chunk
    return _crc_loop(reg, buf[pos:].tobytes())


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli) of a byte buffer, as used by TensorFlow and LevelDB."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return _crc_register(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------ protobuf wire


def _varint(buf, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _Corrupt("corrupt protobuf data: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("corrupt protobuf data: varint longer than 10 bytes")


def _fields(buf) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a protobuf message. Varints are ints, fixed32/64 and
    length-delimited fields are bytes."""
    buf = bytes(buf)
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _Corrupt("corrupt protobuf data: field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos: pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos: pos + 4], pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos: pos + length], pos + length
        else:
            raise _Corrupt(f"corrupt protobuf data: wire type {wire}")
        if pos > n:
            raise _Corrupt("corrupt protobuf data: truncated message")
        yield field, wire, value


def _named(buf, names: dict[int, str]) -> dict[str, object]:
    """The wanted fields of a protobuf message by name ({1: "name"} -> {"name": b"..."}); the last one
    wins where a field repeats, absent fields are absent."""
    return {names[f]: v for f, _wire, v in _fields(buf) if f in names}


def _packed_varints(data: bytes) -> np.ndarray:
    """Decode a packed run of varints (vectorized); returns uint64 (two's complement for negatives)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero(b < 0x80)
    if ends.size == 0 or ends[-1] != b.size - 1:
        raise _Corrupt("truncated packed varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise _Corrupt("corrupt protobuf data: varint longer than 10 bytes")
    out = np.zeros(ends.size, dtype=np.uint64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        out[sel] |= (b[starts[sel] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_shape(buf) -> tuple[int, ...]:
    dims = []
    for field, _wire, value in _fields(buf):
        if field == 2:  # Dim
            size = 0
            for f2, _w2, v2 in _fields(value):
                if f2 == 1:
                    size = _signed64(v2)
            if size < 0:
                raise _Corrupt("tensor shape with unknown dimension")
            dims.append(size)
        elif field == 3 and value:
            raise _Corrupt("tensor shape of unknown rank")
    return tuple(dims)


def _parse_slice(buf) -> list[tuple[int, int] | None]:
    """TensorSliceProto -> per dimension (start, length), None for a full extent."""
    extents: list[tuple[int, int] | None] = []
    for field, _wire, value in _fields(buf):
        if field == 1:
            start, length = 0, None
            for f2, _w2, v2 in _fields(value):
                if f2 == 1:
                    start = _signed64(v2)
                elif f2 == 2:
                    length = _signed64(v2)
            extents.append(None if length is None else (start, length))
    return extents


def _decode_slice_key(key: bytes) -> tuple[str, list[tuple[int, int] | None]]:
    """Decode a tensor-slice key (OrderedCode: num 0, escaped name, rank, then signed start/length per
    dimension; length -1 = the full extent) into (name, extents)."""
    if key[:1] != b"\x00":
        raise _Corrupt("bad tensor slice key")
    pos = 1
    name = bytearray()
    while True:
        c = key[pos]
        if c == 0x00:
            nxt = key[pos + 1]
            pos += 2
            if nxt == 0x01:
                break
            if nxt != 0xFF:
                raise _Corrupt("bad escape in tensor slice key")
            name.append(0x00)
        elif c == 0xFF:
            if key[pos + 1] != 0x00:
                raise _Corrupt("bad escape in tensor slice key")
            name.append(0xFF)
            pos += 2
        else:
            name.append(c)
            pos += 1
    n = key[pos]
    rank = int.from_bytes(key[pos + 1: pos + 1 + n], "big")
    pos += 1 + n

    def signed() -> int:
        nonlocal pos
        neg = not key[pos] & 0x80
        flip = 0xFF if neg else 0
        header = ((key[pos] ^ flip) << 8) | ((key[pos + 1] ^ flip) if pos + 1 < len(key) else 0)
        length = 0
        while length < 10 and header & (0x8000 >> length):
            length += 1
        raw = bytes(b ^ flip for b in key[pos: pos + length])
        if len(raw) != length or length == 0:
            raise _Corrupt("truncated tensor slice key")
        pos += length
        value = int.from_bytes(raw, "big") & ((1 << (7 * length - 1)) - 1)
        return ~value if neg else value

    extents: list[tuple[int, int] | None] = []
    for _ in range(rank):
        start, length = signed(), signed()
        extents.append(None if length == -1 else (start, length))
    return name.decode("utf-8", "replace"), extents


# ---------------------------------------------------------------------------------- sorted tables

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER = 5


def _block(data, offset: int, size: int, limit: int, verify: bool, what: str) -> bytes:
    if offset < 0 or size < 0 or offset + size + _BLOCK_TRAILER > limit:
        raise _Corrupt(f"{what} at bytes [{offset}, {offset + size}) lies outside the file (truncated?)")
    contents = bytes(data[offset: offset + size])
    kind = data[offset + size]
    if verify:
        (stored,) = struct.unpack_from("<I", data, offset + size + 1)
        actual = _crc_register(_crc_register(0xFFFFFFFF, contents), bytes([kind])) ^ 0xFFFFFFFF
        if _unmask(stored) != actual:
            raise _Corrupt(f"{what} at byte {offset} fails its CRC32C check (file corrupt)")
    if kind == 1:
        raise _Corrupt(f"{what} is snappy-compressed, which this reader does not support; re-save the "
                       "checkpoint with TensorFlow's defaults (uncompressed)")
    if kind != 0:
        raise _Corrupt(f"{what} has unknown compression type {kind}")
    return contents


def _block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Corrupt(f"{what} is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise _Corrupt(f"{what} has a bad restart count")
    pos = 0
    key = b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > end:
            raise _Corrupt(f"{what} has a malformed entry")
        key = key[:shared] + block[pos: pos + non_shared]
        pos += non_shared
        yield key, block[pos: pos + value_len]
        pos += value_len


def _table_entries(data, verify: bool) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a TF/LevelDB sorted table held in `data` (bytes-like)."""
    size = len(data)
    if size < _FOOTER_SIZE:
        raise _Corrupt(f"file is {size} bytes, too short to be a TensorFlow checkpoint table")
    footer = bytes(data[size - _FOOTER_SIZE:])
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise _Corrupt("not a TensorFlow checkpoint table (bad magic number at the end of the file; "
                       "truncated, or not a checkpoint)")
    pos = 0
    _meta_off, pos = _varint(footer, pos)
    _meta_size, pos = _varint(footer, pos)
    index_off, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    limit = size - _FOOTER_SIZE
    index = _block(data, index_off, index_size, limit, verify, "table index block")
    for _last_key, handle in _block_entries(index, "table index block"):
        off, p = _varint(handle, 0)
        length, _p = _varint(handle, p)
        block = _block(data, off, length, limit, verify, "table data block")
        yield from _block_entries(block, f"table data block at byte {off}")


# ------------------------------------------------------------------------------------ the reader


def _slice_index(extents: list, shape: tuple[int, ...], name: str) -> tuple[slice, ...]:
    if extents and len(extents) != len(shape):
        raise _Corrupt(f"slice of tensor {name!r} has rank {len(extents)}, tensor has rank {len(shape)}")
    index = []
    for d, dim in enumerate(shape):
        ext = extents[d] if extents else None
        start, length = (0, dim) if ext is None else ext
        if start < 0 or length < 0 or start + length > dim:
            raise _Corrupt(f"slice of tensor {name!r} lies outside its shape {shape}")
        index.append(slice(start, start + length))
    return tuple(index)


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype_code: int
    shape: tuple[int, ...]
    # V2 bundle
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int | None = None
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        return _dtype_info(self.dtype_code)[0]


_SHARD_RE = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")
_V1_SHARD_RE = r"-\d{5}-of-\d{5}$"


class CheckpointReader:
    """A TensorFlow checkpoint opened for reading. See the module docstring for formats and checks.

    ``path`` may be a V2 prefix (``model.ckpt`` with ``model.ckpt.index`` beside it), the ``.index``
    file or a ``.data-*`` shard of a V2 bundle, a V1 single file, the common prefix of a sharded V1
    set, or a directory holding a ``checkpoint`` state file or exactly one ``.index`` file.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True) -> None:
        self.verify = verify
        self.path = Path(path)
        self._v1_tables: dict[str, list[tuple[Path, bytes]]] = {}
        self.format, self._files = self._locate(self.path)
        self._entries: dict[str, _Entry] = {}
        if self.format == "v2":
            self._open_v2()
        else:
            self._open_v1()

    # -- locating ---------------------------------------------------------------------------------

    def _locate(self, path: Path) -> tuple[str, list[Path]]:
        if path.is_dir():
            return self._locate(self._from_directory(path))
        name = str(path)
        if name.endswith(".index") and path.is_file():
            return "v2", [path]
        if Path(name + ".index").is_file():
            return "v2", [Path(name + ".index")]
        m = _SHARD_RE.match(name)
        if m and Path(m.group(1) + ".index").is_file():
            return "v2", [Path(m.group(1) + ".index")]
        if path.is_file():
            return "v1", [path]
        shards = sorted(p for p in path.parent.glob(path.name + "-?????-of-?????")
                        if re.search(_V1_SHARD_RE, p.name))
        if shards:
            return "v1", shards
        raise CheckpointError(f"no TensorFlow checkpoint at {name}: neither the file nor {name}.index "
                              "exists (pass the checkpoint prefix, the .index file, or a V1 .ckpt file)")

    @staticmethod
    def _from_directory(path: Path) -> Path:
        state = path / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
            if m:
                target = Path(m.group(1))
                return target if target.is_absolute() else path / target
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0]
        found = ", ".join(p.name for p in indexes) or "none"
        raise CheckpointError(f"{path} is a directory; name the checkpoint inside it "
                              f"(.index files found: {found})")

    @staticmethod
    def _read_file(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e

    def _wrap(self, path: Path, exc: Exception) -> CheckpointError:
        return CheckpointError(f"{path}: {exc}")

    # -- V2 ---------------------------------------------------------------------------------------

    def _open_v2(self) -> None:
        index_path = self._files[0]
        self.prefix = str(index_path)[: -len(".index")]
        data = self._read_file(index_path)
        num_shards = None
        self._v2_slices: dict[str, list[tuple[list, _Entry]]] = {}
        try:
            for key, value in _table_entries(data, self.verify):
                if key == b"":
                    num_shards, big_endian = 1, False
                    for field, _wire, v in _fields(value):
                        if field == 1:
                            num_shards = v
                        elif field == 2:
                            big_endian = v == 1
                    if big_endian:
                        raise _Corrupt("big-endian bundles are not supported")
                    continue
                if key[:1] == b"\x00":  # data of one slice of a partitioned variable
                    name, extents = _decode_slice_key(key)
                    self._v2_slices.setdefault(name, []).append(
                        (extents, self._parse_bundle_entry(key, value)))
                    continue
                self._entries[key.decode("utf-8", "replace")] = self._parse_bundle_entry(key, value)
        except _Corrupt as e:
            raise self._wrap(index_path, e) from None
        except (IndexError, ValueError, struct.error, OverflowError) as e:
            raise self._wrap(index_path, _Corrupt(f"corrupt checkpoint index ({e})")) from None
        if num_shards is None:
            raise self._wrap(index_path, _Corrupt("no bundle header entry; not a V2 checkpoint index"))
        self.num_shards = int(num_shards)
        self._shard_paths = [Path(f"{self.prefix}.data-{i:05d}-of-{self.num_shards:05d}")
                             for i in range(self.num_shards)]
        sizes = {}
        pieces = [e for e in self._entries.values() if not e.sliced]
        pieces += [e for parts in self._v2_slices.values() for _ext, e in parts]
        for entry in pieces:
            if _dtype_info(entry.dtype_code)[1] is None:
                continue
            if not 0 <= entry.shard < self.num_shards:
                raise self._wrap(index_path, _Corrupt(f"tensor {entry.name!r} names shard {entry.shard} "
                                                      f"of {self.num_shards}"))
            shard = self._shard_paths[entry.shard]
            if shard not in sizes:
                try:
                    sizes[shard] = shard.stat().st_size
                except OSError:
                    raise CheckpointError(f"checkpoint data file missing: {shard} (expected beside "
                                          f"{index_path})") from None
            if entry.offset + entry.size > sizes[shard]:
                raise CheckpointError(
                    f"{shard}: file is {sizes[shard]} bytes but tensor {entry.name!r} needs bytes "
                    f"[{entry.offset}, {entry.offset + entry.size}) (truncated?)")

    @staticmethod
    def _parse_bundle_entry(key: bytes, value: bytes) -> _Entry:
        name = key.decode("utf-8", "replace")
        fields: dict[str, object] = {"dtype_code": 0, "shape": (), "shard": 0, "offset": 0, "size": 0}
        for field, _wire, v in _fields(value):
            if field == 1:
                fields["dtype_code"] = v
            elif field == 2:
                fields["shape"] = _parse_shape(v)
            elif field == 3:
                fields["shard"] = v
            elif field == 4:
                fields["offset"] = v
            elif field == 5:
                fields["size"] = v
            elif field == 6:
                fields["crc"] = struct.unpack("<I", v)[0]
            elif field == 7:
                fields["sliced"] = True
        return _Entry(name=name, **fields)  # type: ignore[arg-type]

    def _read_v2(self, entry: _Entry) -> np.ndarray:
        if entry.sliced:
            return self._read_v2_partitioned(entry)
        dtype_name, np_dtype = _dtype_info(entry.dtype_code)
        if np_dtype is None:
            raise CheckpointError(f"{self.prefix}: tensor {entry.name!r} has dtype {dtype_name}, "
                                  "which this reader does not support")
        expected = int(np.prod(entry.shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        if expected != entry.size:
            raise CheckpointError(f"{self.prefix}.index: tensor {entry.name!r} of shape {entry.shape} and "
                                  f"dtype {dtype_name} should take {expected} bytes, not {entry.size}")
        shard = self._shard_paths[entry.shard]
        try:
            with open(shard, "rb") as f:
                f.seek(entry.offset)
                raw = f.read(entry.size)
        except OSError as e:
            raise CheckpointError(f"cannot read {shard}: {e.strerror or e}") from e
        if len(raw) != entry.size:
            raise CheckpointError(f"{shard}: truncated; tensor {entry.name!r} needs bytes "
                                  f"[{entry.offset}, {entry.offset + entry.size})")
        if self.verify and entry.crc is not None and crc32c(raw) != _unmask(entry.crc):
            raise CheckpointError(f"{shard}: data of tensor {entry.name!r} fails its CRC32C check "
                                  "(file corrupt or modified)")
        return _finish(np.frombuffer(raw, dtype=np_dtype), dtype_name, entry.shape)

    def _read_v2_partitioned(self, entry: _Entry) -> np.ndarray:
        dtype_name, _np_dtype = _dtype_info(entry.dtype_code)
        out = None
        covered = 0
        for extents, piece in self._v2_slices.get(entry.name, []):
            try:
                index = _slice_index(extents, entry.shape, entry.name)
            except _Corrupt as e:
                raise self._wrap(Path(self.prefix + ".index"), e) from None
            part_shape = tuple(s.stop - s.start for s in index)
            data = self._read_v2(_Entry(name=entry.name, dtype_code=entry.dtype_code, shape=part_shape,
                                        shard=piece.shard, offset=piece.offset, size=piece.size,
                                        crc=piece.crc))
            if out is None:
                out = np.empty(entry.shape, dtype=data.dtype)
            out[index] = data
            covered += data.size
        total = int(np.prod(entry.shape, dtype=np.int64))
        if out is None or covered != total:
            raise CheckpointError(f"{self.prefix}.index: the slices of partitioned tensor {entry.name!r} "
                                  f"cover {covered} of its {total} values")
        return out

    # -- V1 ---------------------------------------------------------------------------------------

    def _open_v1(self) -> None:
        self._v1_slices: dict[str, list[tuple[list, bytes, Path]]] = {}
        for path in self._files:
            data = self._read_file(path)
            meta_seen = False
            try:
                entries = list(_table_entries(data, self.verify))
                if any(key[:1] not in (b"", b"\x00") for key, _value in entries):
                    raise _Corrupt("a sorted table, but not a TensorFlow V1 checkpoint (it looks like the "
                                   ".index of a V2 bundle: pass the checkpoint prefix or the .index path)")
                for key, value in entries:
                    if key == b"":
                        meta_seen = True
                        self._parse_v1_meta(value)
                        continue
                    self._parse_v1_data(value, path)
            except _Corrupt as e:
                raise self._wrap(path, e) from None
            except (IndexError, ValueError, struct.error, OverflowError) as e:
                raise self._wrap(path, _Corrupt(f"corrupt checkpoint ({e})")) from None
            if not meta_seen:
                raise self._wrap(path, _Corrupt("no SavedTensorSliceMeta entry; a sorted table, but not a "
                                                "TensorFlow V1 checkpoint"))

    def _parse_v1_meta(self, value: bytes) -> None:
        for field, _wire, v in _fields(value):
            if field != 1:  # SavedTensorSlices.meta
                continue
            for f2, _w2, tensor in _fields(v):
                if f2 != 1:  # SavedTensorSliceMeta.tensor
                    continue
                m = _named(tensor, {1: "name", 2: "shape", 3: "dtype"})
                name, code = m.get("name", b"").decode("utf-8", "replace"), m.get("dtype", 0)
                shape = _parse_shape(m["shape"]) if "shape" in m else ()
                if name in self._entries and self._entries[name].shape != shape:
                    raise _Corrupt(f"tensor {name!r} has different shapes in different shards")
                self._entries[name] = _Entry(name=name, dtype_code=code, shape=shape)

    def _parse_v1_data(self, value: bytes, path: Path) -> None:
        for field, _wire, v in _fields(value):
            if field != 2:  # SavedTensorSlices.data
                continue
            m = _named(v, {1: "name", 2: "slice", 3: "data"})
            name, proto = m.get("name", b"").decode("utf-8", "replace"), m.get("data", b"")
            extents = _parse_slice(m["slice"]) if "slice" in m else []
            self._v1_slices.setdefault(name, []).append((extents, proto, path))

    @staticmethod
    def _tensor_proto_values(proto: bytes, dtype_name: str, np_dtype: str, count: int) -> np.ndarray:
        content = None
        chunks: dict[int, list] = {}
        for field, wire, v in _fields(proto):
            if field == 4:
                content = v
            elif field in (5, 6, 7, 9, 10, 11, 12, 13, 16, 17):
                chunks.setdefault(field, []).append((wire, v))
        if content is not None:
            values = np.frombuffer(content, dtype=np_dtype)
        else:
            field = {"float32": 5, "complex64": 9, "float64": 6, "complex128": 12, "int64": 10, "bool": 11,
                     "float16": 13, "bfloat16": 13, "uint32": 16, "uint64": 17}.get(dtype_name, 7)
            parts = []
            for wire, v in chunks.get(field, []):
                if field in (5, 9):
                    parts.append(np.frombuffer(v, dtype="<f4"))
                elif field in (6, 12):
                    parts.append(np.frombuffer(v, dtype="<f8"))
                elif wire == 2:
                    parts.append(_packed_varints(v))
                else:
                    parts.append(np.array([v], dtype=np.uint64))
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np_dtype)
            if field == 13:  # half_val: the 16-bit patterns of float16 / bfloat16, one per int32
                values = flat.astype(np.uint16).view(np_dtype)
            elif field in (5, 6):
                values = flat.astype(np_dtype)
            elif field in (9, 12):
                values = flat.view(np_dtype) if flat.size % 2 == 0 else flat
            else:  # varints: truncate to the element width (int32 negatives are sign-extended)
                values = flat.astype(np.uint64).astype(np_dtype) if np_dtype != "?" else flat != 0
        if values.size != count:
            raise _Corrupt(f"slice holds {values.size} values where {count} are expected")
        return values

    def _read_v1(self, entry: _Entry) -> np.ndarray:
        dtype_name, np_dtype = _dtype_info(entry.dtype_code)
        if np_dtype is None:
            raise CheckpointError(f"{self._files[0]}: tensor {entry.name!r} has dtype {dtype_name}, "
                                  "which this reader does not support")
        shape = entry.shape
        out = np.empty(shape, dtype=np.dtype(np_dtype).newbyteorder("="))
        covered = 0
        slices = self._v1_slices.get(entry.name, [])
        for extents, proto, path in slices:
            try:
                index = _slice_index(extents, shape, entry.name)
                part_shape = tuple(s.stop - s.start for s in index)
                count = int(np.prod(part_shape, dtype=np.int64))
                values = self._tensor_proto_values(proto, dtype_name, np_dtype, count)
            except _Corrupt as e:
                raise self._wrap(path, e) from None
            except (IndexError, ValueError, struct.error, OverflowError) as e:
                raise self._wrap(path, _Corrupt(f"corrupt data for tensor {entry.name!r} ({e})")) from None
            out[tuple(index)] = values.reshape(part_shape)
            covered += count
        total = int(np.prod(shape, dtype=np.int64))
        if covered != total:
            raise CheckpointError(f"{self._files[0]}: the slices of tensor {entry.name!r} cover {covered} of "
                                  f"its {total} values (missing shard or corrupt file)")
        return _finish(out, dtype_name, shape)

    # -- public -----------------------------------------------------------------------------------

    def list_variables(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype name, shape) of every tensor, sorted by name, without reading data."""
        return {name: (e.dtype_name, e.shape) for name, e in sorted(self._entries.items())}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array."""
        entry = self._entries.get(name)
        if entry is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} in the checkpoint")
        return self._read_v2(entry) if self.format == "v2" else self._read_v1(entry)

    def read_all(self, *, strict: bool = False) -> dict[str, np.ndarray]:
        """Every tensor. Unsupported ones are skipped with a warning (strict=False) or raise (strict=True)."""
        out = {}
        skipped = []
        for name, entry in sorted(self._entries.items()):
            if not strict and _dtype_info(entry.dtype_code)[1] is None:
                skipped.append(f"{name} ({entry.dtype_name})")
                continue
            out[name] = self.read(name)
        if skipped:
            warnings.warn(f"{self.path}: skipped {len(skipped)} tensor(s) this reader does not support: "
                          + ", ".join(skipped), UserWarning, stacklevel=3)
        return out


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True, strict: bool = False
                    ) -> dict[str, np.ndarray]:
    """Read every tensor of a TF checkpoint.

    ``path`` is a prefix (``model.ckpt`` with ``model.ckpt.index`` beside it: V2 bundle), a V1 single
    file (``model.ckpt``), or the ``.index`` file itself; the format is detected. With ``verify`` the
    CRC32C checksums are checked. Tensors of unsupported dtypes (strings, ...) are skipped with a
    :class:`UserWarning`, or raise :class:`CheckpointError` if ``strict``.
    """
    return CheckpointReader(path, verify=verify).read_all(strict=strict)


def list_variables(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype name, shape) for every tensor of a TF checkpoint, without reading tensor data."""
    return CheckpointReader(path, verify=False).list_variables()
