"""Tar shards in the WebDataset layout: `pack` writes them, `load_shards` trains and evaluates from them.

A shard is a plain .tar whose members are grouped into samples by WebDataset's rule: a member's key is its
path up to the first dot of its last component, folders kept (`a/b.c/k.seg.png` -> key `a/b.c/k`, field
`seg.png`; GNU tar's leading `./` is dropped), and consecutive members with one key are one sample. A
sample is an image (field jpg, png, ... as the image's own bytes) and a label as a decimal number (field
cls, else cls.txt, label or label.txt); other fields are ignored. So shards written by GNU tar, Python's
tarfile or webdataset's TarWriter read alike. `pack` writes KEY.jpg + KEY.cls in a shuffled order
(seed 0), so that a shard mixes the classes, and OUT/index.json (class names and each shard's sample
count), so a reader knows the epoch length and the classes without scanning; shards without it are
scanned once. Shards may be local paths or URLs (http(s)://, file://, s3://, ...: anything fsspec opens,
with the `remote` extra; s3:// also needs s3fs), brace patterns included; an index.json beside them is read.

Reading is sequential, one shard at a time, with a small reader of our own (tarfile in stream mode, so a
URL is read once front to back, never seeked). The `webdataset` package is not needed: its resume and
rank/worker splitting would still need the code below. Each epoch the shard list is shuffled from
(seed, epoch); of the P = processes x workers readers, reader s takes shards s, s+P, ... (with fewer
shards than readers, every reader reads all of them and keeps every P-th sample), shuffles samples in a
buffer of SHUFFLE samples seeded by (seed, epoch, reader), and starts over on its shards if it runs out
before the epoch's steps are done. The DataLoader takes the workers' batches in turn, so a run resumed
with the same process count and data.workers is exact (the samples before the resume point are read
again but not decoded); with another count it sees a different, equally shuffled order.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from resnetkit._helpers import atomic_write, atomic_write_json, check_output
from resnetkit.data import datasets, stream
from resnetkit.data.folder import IMAGE_SUFFIXES
from resnetkit.data.loader import derived_generator
from resnetkit.data.stream import EvalTransform, StreamedSplit, TrainTransform, image_seed
from resnetkit.errors import ConfigError, DataError, DependencyError, MissingFileError

log = logging.getLogger(__name__)

INDEX = "index.json"
SHUFFLE = 512  # samples in each reader's shuffle buffer
LABEL_FIELDS = ("cls", "cls.txt", "label", "label.txt")  # the first one a sample has is its label
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# WebDataset's base_plus_ext (webdataset/tariterators.py): the key ends at the first dot of the last component.
MEMBER = re.compile(r"((?:.*/)?[^./]+)\.([^/]*)")
UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64K', '1000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"shard_size={text!r}: give a size such as 1GB, 500MB or 64K")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def expand(pattern: str) -> list[str]:
    """Brace expansion as WebDataset writes it: 'a-{000000..000009}.tar', 'a-{x,y}.tar' (nested, several)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi, width = int(r.group(1)), int(r.group(2)), len(r.group(1))
        if hi < lo or hi - lo > 10**6:
            raise ConfigError(f"{pattern}: the range {{{body}}} is empty or too long")
        parts = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        parts = body.split(",")
    return [s for p in parts for s in expand(head + p + tail)]


# -- writing -------------------------------------------------------------------------------------------


def pack(src: str | Path, out: str | Path, shard_size: int = 1 << 30, *, val: str | None = None,
         overwrite: bool = False) -> dict:
    """Pack an image folder (ROOT/CLASS/IMAGE, or ROOT/train + ROOT/val|test, or `val`) into shards
    OUT/{train,val}-NNNNNN.tar of about `shard_size` bytes, each written atomically, then OUT/index.json.
    Existing files are refused unless `overwrite`. Returns the index."""
    out = Path(out)
    train_dir, val_dir = datasets.folder_splits(src, val)
    train = stream.list_folder(train_dir)
    splits = {"train": train}
    if val_dir is not None:
        splits["val"] = stream.list_folder(val_dir, classes=train.class_names)
    check_output(out / INDEX, inputs=[src] + ([val] if val else []), overwrite=overwrite)
    index = {"format": "webdataset (KEY.jpg + KEY.cls)", "classes": train.class_names, "splits": {}}
    for name, files in splits.items():
        index["splits"][name] = _write_split(files, out, name, shard_size, overwrite)
    atomic_write_json(out / INDEX, index)
    return index


def _write_split(files: stream.FileList, out: Path, name: str, shard_size: int, overwrite: bool) -> list:
    order = random.Random(0).sample(range(len(files)), len(files))  # shards that mix the classes
    shards, batch, size = [], [], 0
    for i in order:
        batch.append(i)
        size += Path(files.path(i)).stat().st_size + 1536  # two tar headers and padding
        if size >= shard_size:
            shards.append(batch)
            batch, size = [], 0
    if batch:
        shards.append(batch)
    written = []
    for k, members in enumerate(shards):
        path = check_output(out / f"{name}-{k:06d}.tar", overwrite=overwrite)
        with atomic_write(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in members:
                src = Path(files.path(i))
                suffix = ".jpg" if src.suffix.lower() in (".jpg", ".jpeg") else src.suffix.lower()
                _add(tar, f"{name}_{i:09d}{suffix}", src.read_bytes())
                _add(tar, f"{name}_{i:09d}.cls", str(int(files.labels[i])).encode())
        written.append([path.name, len(members)])
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


# -- reading -------------------------------------------------------------------------------------------


def sample_key(name: str) -> tuple[str, str] | None:
    """(key, field) of a tar member by WebDataset's rule, or None for a member that is not part of a sample
    (no dot in its last component, a dot file): 'a/b.c/k.seg.png' -> ('a/b.c/k', 'seg.png'), './k.jpg' ->
    ('k', 'jpg'). Fields are lower-cased, as WebDataset does."""
    while name.startswith("./"):
        name = name[2:]
    m = MEMBER.fullmatch(name)
    return (m.group(1), m.group(2).lower()) if m else None


def samples(path: str) -> Iterator[tuple[str, bytes | None, bytes | None, str]]:
    """(key, image bytes or None, label bytes or None, image suffix) of a shard (a path or URL), in file order."""
    key, fields = None, {}
    try:
        with _open(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:  # a stream: one pass, no seeking
            for m in tar:
                kf = sample_key(m.name) if m.isfile() else None
                if kf is None:
                    continue
                if kf[0] != key:
                    if key is not None:
                        yield _sample(key, fields)
                    key, fields = kf[0], {}
                if kf[1] in LABEL_FIELDS or "." + kf[1] in IMAGE_SUFFIXES:
                    fields[kf[1]] = tar.extractfile(m).read()
    except _read_errors() as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None
    if key is not None:
        yield _sample(key, fields)


def _sample(key: str, fields: dict[str, bytes]) -> tuple[str, bytes | None, bytes | None, str]:
    label = next((fields[f] for f in LABEL_FIELDS if f in fields), None)
    image = next((f for f in fields if "." + f in IMAGE_SUFFIXES), None)
    return key, fields.get(image), label, "." + image if image else ""


# -- local paths and URLs ------------------------------------------------------------------------------


def is_url(path: str) -> bool:
    return URL.match(path) is not None


def _filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a missing package is one line naming the extra."""
    fix = "pip install 'resnetkit[remote]'" + ("" if url.startswith(("http", "file")) else
                                               "; s3:// also needs s3fs, gs:// gcsfs")
    try:
        import fsspec  # noqa: PLC0415  (only for URLs)
    except ImportError:
        raise DependencyError(f"{url}: reading shards from a URL needs fsspec ({fix})") from None
    try:
        options = {}
        if url.startswith(("http://", "https://")):
            import aiohttp  # noqa: PLC0415  (fsspec's http client)

            # aiohttp's default gives up on a request after 5 minutes in all: too short to stream a 1 GB shard
            # over a slow link. Limit the wait for each read instead.
            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)}
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise DependencyError(f"{url}: {str(e).splitlines()[0]} ({fix})") from None
    except ValueError as e:  # an unknown protocol
        raise ConfigError(f"{url}: {e}") from None


def _open(path: str):
    if not is_url(path):
        return open(path, "rb")  # noqa: SIM115  (closed by the caller's with)
    fs, inner = _filesystem(path)
    # http(s): a streamed GET (block_size 0), which needs no Range support and matches the one pass we make.
    return fs.open(inner, "rb", **({"block_size": 0} if "http" in fs.protocol else {}))


def _exists(path: str) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, inner = _filesystem(path)
    try:
        return fs.exists(inner)
    except _read_errors():
        return False


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a shard can raise: tar and OS errors, and aiohttp's own (not OSErrors) once it is in use."""
    aiohttp = sys.modules.get("aiohttp")
    return (tarfile.TarError, OSError, EOFError) + ((aiohttp.ClientError,) if aiohttp else ())


def _beside(path: str, name: str) -> str:
    """The file `name` in the folder of `path` (a path or URL)."""
    return path.rsplit("/", 1)[0] + "/" + name if is_url(path) else str(Path(path).parent / name)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def _scan(paths: list[str]) -> tuple[list[int], int]:
    """Sample counts of shards without an index, and the largest label + 1."""
    counts, top = [], 0
    for p in paths:
        n = 0
        for _, _image, label, _ in samples(p):
            n += 1
            if label is not None and label.strip().isdigit():
                top = max(top, int(label) + 1)
        counts.append(n)
    return counts, top


def _index(first: str) -> tuple[list[str], dict[str, int], dict] | None:
    """(class names, sample count by shard name, splits) of the index.json beside the shard `first`, or None."""
    path = _beside(first, INDEX)
    if not _exists(path):
        return None
    try:
        with _open(path) as f:
            text = f.read()
    except _read_errors() as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    try:
        index = json.loads(text)
        counts = {str(n): int(c) for split in index["splits"].values() for n, c in split}
        return list(index["classes"]), counts, index["splits"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a shard index ({e})") from None


def _shard_list(pattern: str, what: str) -> tuple[list[str], list[int], list[str], dict]:
    """(paths, sample counts, class names, the index's splits or {}) for a shard pattern."""
    paths = expand(pattern)
    # A URL is checked at both ends of its range only (a request each); a shard missing in between is named
    # when it is read.
    if is_url(pattern):
        missing = [p for p in paths[::max(1, len(paths) - 1)] if not _exists(p)]
        if missing:
            raise MissingFileError(f"{what} {pattern}: {missing[0]} does not exist (of {len(paths)} shards, the first "
                                   "and the last are checked)")
    elif missing := [p for p in paths if not Path(p).is_file()]:
        raise MissingFileError(f"{what} {pattern}: {len(missing)} of {len(paths)} shards do not exist, e.g. "
                               f"{missing[0]}")
    names, known, splits = _index(paths[0]) or (None, {}, {})
    if names and all(_name(p) in known for p in paths):
        return paths, [known[_name(p)] for p in paths], names, splits
    counts, top = _scan(paths)
    return paths, counts, names or [str(i) for i in range(top)], splits


@dataclass
class ShardSet(StreamedSplit):
    """A split read from tar shards: what the trainer and evaluate need of a dataset, like StreamSet."""

    paths: list[str]
    counts: list[int]
    class_names: list[str]
    train_transform: TrainTransform
    eval_transform: EvalTransform
    mean: tuple[float, ...] = stream.IMAGENET_MEAN
    std: tuple[float, ...] = stream.IMAGENET_STD
    strict: bool = False
    workers: int = 4
    info: dict = field(default_factory=lambda: {"kind": "shards"})

    def __len__(self) -> int:
        return sum(self.counts)

    def subset(self, n: int) -> ShardSet:
        """The shards that hold the first n samples (a shard set is read whole)."""
        k, total = 0, 0
        while k < len(self.counts) and total < n:
            total, k = total + self.counts[k], k + 1
        return replace(self, paths=self.paths[:k], counts=self.counts[:k])

    def train_batches(self, seed: int, epoch: int, start: int, global_batch: int, rank: int, world: int,
                      accum: int) -> Iterator[dict]:
        """This process's micro-batches (global_batch / (world x accum) images) of the epoch from batch `start`
        on: {"x" uint8 (B, C, H, W), "y"}; see the module docstring for which samples they hold."""
        micro, n_micro = global_batch // (world * accum), len(self) // global_batch * accum
        reader = _Reader(self, seed, epoch, start * accum, micro, n_micro, rank, world, train=True)
        return _load(reader, self.workers)

    def first_batch(self, n: int) -> dict:
        """The first n samples of the first shards, decoded here with training draws: a probe batch."""
        reader = _Reader(self, 0, 0, 0, n, 1, 0, 1, train=True)
        return next(_load(reader, 0))

    def eval_batches(self, part: int, parts: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's evaluation batches (shards part, part + parts, ...)."""
        reader = _Reader(self, 0, 0, 0, batch_size, 0, part, parts, train=False)
        for item in _load(reader, min(self.workers, max(1, len(self.paths[part::parts])))):
            yield item["x"], item["y"]


def _load(reader: _Reader, workers: int) -> Iterator[dict]:
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=workers,
                                         worker_init_fn=stream._one_thread, pin_memory=torch.cuda.is_available(),
                                         multiprocessing_context=stream.worker_context(workers))
    yield from stream.drain(loader, "sample")


class _Reader(torch.utils.data.IterableDataset):
    """One DataLoader worker's share of a process's shards, as micro-batches (see the module docstring)."""

    def __init__(self, data: ShardSet, seed, epoch, start, micro, n_micro, part, parts, train: bool):
        self.data, self.seed, self.epoch, self.start = data, seed, epoch, start
        self.micro, self.n_micro, self.part, self.parts, self.train = micro, n_micro, part, parts, train

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if not self.train:
            return self._eval(self.data.paths[self.part::self.parts][w::nw])
        # The loader takes its workers' batches in turn from worker 0, so after a resume at micro-batch `start`
        # worker w plays reader (w + start) % nw: the one that made micro-batch start + w in the full run.
        r = (w + self.start) % nw
        return self._train(self.part * nw + r, self.parts * nw, r, nw)

    def _train(self, slot: int, slots: int, w: int, nw: int) -> Iterator[dict]:
        order = torch.randperm(len(self.data.paths), generator=derived_generator(self.seed, self.epoch)).tolist()
        paths = [self.data.paths[i] for i in order]
        mine, keep = (paths[slot::slots], (1, 0)) if len(paths) >= slots else (paths, (slots, slot))
        source = self._shuffled(mine, keep, slot)
        counter = 0
        # The loader takes worker w's batches as the process's micro-batches w, w + nw, ...
        for m in range(w, self.n_micro, nw):
            batch, bad = [], []
            while len(batch) < self.micro:
                key, image, label, suffix = next(source)
                counter += 1
                if m < self.start:  # before the resume point: read, not decoded
                    batch.append(None)
                    continue
                item = self._decode(key, image, label, suffix, image_seed(self.seed, self.epoch, slot, counter), bad)
                if isinstance(item, str):
                    yield _failed(item, bad)
                    return
                if item is not None:
                    batch.append(item)
            if m >= self.start:
                yield {"x": torch.stack([x for x, _ in batch]), "y": torch.tensor([y for _, y in batch]),
                       "bad": bad, "error": ""}

    def _shuffled(self, paths: list[str], keep: tuple[int, int], slot: int) -> Iterator[tuple]:
        """Samples of `paths`, over and over, through a shuffle buffer seeded by (seed, epoch, reader, pass)."""
        for cycle in range(10**9):
            rng, buf, n = random.Random(image_seed(self.seed, self.epoch, slot, -1 - cycle)), [], 0
            for p in paths:
                for s in samples(p):
                    n += 1
                    if (n - 1) % keep[0] != keep[1]:
                        continue
                    buf.append(s)
                    if len(buf) >= SHUFFLE:
                        yield buf.pop(rng.randrange(len(buf)))
            rng.shuffle(buf)
            yield from buf
            if n == 0:
                raise DataError(f"{', '.join(paths[:3])}: no samples")

    def _eval(self, paths: list[str]) -> Iterator[dict]:
        batch, bad = [], []
        for p in paths:
            for key, image, label, suffix in samples(p):
                item = self._decode(key, image, label, suffix, 0, bad, p)
                if isinstance(item, str):
                    yield _failed(item, bad)
                    return
                if item is not None:
                    batch.append(item)
                if len(batch) == self.micro:
                    yield _batch(batch, bad)
                    batch, bad = [], []
        if batch or bad:
            yield _batch(batch, bad, self.data.eval_transform)

    def _decode(self, key, image, label, suffix, seed, bad: list[str], where: str = "") -> tuple | str | None:
        """(x, y), None for a skipped sample (named in `bad`), or the error text when strict."""
        t = self.data.train_transform if self.train else self.data.eval_transform
        try:
            if label is None or image is None:
                raise DataError(f"sample {key}{' in ' + where if where else ''} has no "
                                f"{'.cls label (nor .cls.txt, .label, .label.txt)' if label is None else 'image'}")
            y = int(label)
            if not 0 <= y < self.data.num_classes:
                raise DataError(f"sample {key}: label {y} outside the {self.data.num_classes} classes")
            return t(_Named(image, f"sample {key}{' in ' + where if where else ''}"), seed), y
        except (DataError, ValueError) as e:
            text = str(e) if isinstance(e, DataError) else f"sample {key}: label {label[:20]!r} is not a number"
            if self.data.strict:
                return f"{text}; remove it, or skip such samples (strict=False)"
            bad.append(text)
            return None


class _Named(io.BytesIO):
    """A sample's bytes that name the sample in a decoding error."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def _batch(batch: list, bad: list[str], t: EvalTransform | None = None) -> dict:
    if not batch:
        x = torch.zeros((0, t.channels, t.crop, t.crop), dtype=torch.uint8)
        return {"x": x, "y": torch.zeros(0, dtype=torch.int64), "bad": bad, "error": ""}
    return {"x": torch.stack([x for x, _ in batch]), "y": torch.tensor([y for _, y in batch]), "bad": bad, "error": ""}


def _failed(text: str, bad: list[str]) -> dict:
    return {"x": torch.zeros(0), "y": torch.zeros(0), "bad": bad, "error": text}


def load_shards(pattern: str, val_pattern: str | None, train_t: TrainTransform, eval_t: EvalTransform, *,
                strict: bool = False, workers: int = 4) -> tuple[ShardSet, ShardSet]:
    """(train, val) ShardSets of shard patterns (paths or URLs): `val_pattern`, else the val split of the index
    beside the train shards."""
    paths, counts, names, splits = _shard_list(pattern, "shards")
    if val_pattern is None:
        val = splits.get("val")
        if not val:
            raise ConfigError(f"shards {pattern}: no validation shards; pass val_path (a shard pattern), or pack a "
                              "folder with a val/ split")
        val_pattern = _beside(paths[0], "{" + ",".join(n for n, _ in val) + "}")
    vpaths, vcounts, _, _ = _shard_list(val_pattern, "val_path")
    log.info("data: %d shards (%d samples) for training, %d (%d) for evaluation, streamed", len(paths), sum(counts),
             len(vpaths), sum(vcounts))
    kw = dict(strict=strict, workers=workers)
    return (ShardSet(paths, counts, names, train_t, eval_t, **kw), ShardSet(vpaths, vcounts, names, train_t, eval_t,
                                                                              **kw))
