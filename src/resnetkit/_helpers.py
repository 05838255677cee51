"""Helpers every floor shares (the bottom of the package: imports nothing of resnetkit but `errors`).

One each of: atomic file writes, strict state-dict loading, "did you mean" suggestions, and the
description of the machine that benchmarks and reports print.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import nn

from resnetkit.errors import CheckpointError, ConfigError, DataError, OutputExistsError

try:  # `from resnetkit._helpers import tomllib`: the standard library's from Python 3.11, tomli (its origin) on 3.10
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib  # noqa: F401


# -- files -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds, delete it
    when the block fails (any exception, KeyboardInterrupt included), so no reader ever sees half a file.

    The temporary name ends in `suffix` (default: `path`'s own), for writers that pick the format from
    the name (PIL, torch.export). It gets a normal file's mode (mkstemp's is 0600). `fsync` flushes the
    file to disk before the rename (checkpoints that must survive a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix or path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        # A normal file's mode (mkstemp's is 0600), set after writing: some writers (safetensors) replace
        # the file they are given rather than write into it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON (plus a newline) to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_image(image, path: str | os.PathLike, **kw) -> Path:
    """Save a PIL image atomically; the suffix of `path` picks the format."""
    with atomic_write(path) as tmp:
        image.save(tmp, **kw)
    return Path(path)


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False
                 ) -> Path:
    """The output policy every command follows: `path` must not equal an input or lie inside an input
    folder (a second run would read its own outputs), and must not replace an existing file unless
    `overwrite`. Raises OutputExistsError (a FileExistsError) naming both paths; returns `path`."""
    out = Path(path)
    resolved = out.resolve()
    for i in inputs:
        src = Path(i).resolve()
        if resolved == src or (src.is_dir() and src in resolved.parents):
            raise OutputExistsError(f"{out}: the output would be written {'over' if resolved == src else 'inside'} "
                                    f"the input {i}; choose another output path")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another output path, or pass overwrite=True "
                                "(CLI: --overwrite) to replace it")
    return out


# -- containers --------------------------------------------------------------------------------------
EXPANSION_FACTOR, EXPANSION_EXTRA = 4, 64 << 20  # weights barely compress: 4x plus 64 MiB is generous


def expansion_limit(path: str | os.PathLike, max_bytes: int | None = None) -> int:
    """How many bytes a container (tar, zip, HDF5) at `path` may expand to before it is refused as a
    bomb: `max_bytes` when given, else 4x its size plus 64 MiB."""
    return max_bytes if max_bytes is not None else EXPANSION_FACTOR * os.path.getsize(path) + EXPANSION_EXTRA


# -- images ------------------------------------------------------------------------------------------
# Modes whose samples exceed 8 bits; PIL's convert("L"/"RGB") clips them to 255 instead of scaling.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """`im` as 'RGB' or 'L', scaling 16-bit (and 32-bit integer, read as 16-bit) samples to 8 bits and
    float images from [0, 1], where PIL's own convert would clip them."""
    full = _WIDE_MODES.get(im.mode)
    if full is not None:
        a = np.asarray(im, dtype=np.float64) * (255.0 / full)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


def open_image(path: str | os.PathLike, mode: str) -> Image.Image:
    """Decode an image file fully as `mode` ('RGB' or 'L'). An unreadable file, or one that would
    decode to more than PIL's MAX_IMAGE_PIXELS (a decompression bomb), raises a DataError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not just warn
            with Image.open(path) as im:
                return to_mode(im, mode).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


# -- names -------------------------------------------------------------------------------------------
def did_you_mean(name: str, known: Iterable[str], fallback: str = "") -> str:
    """'did you mean a, b?' for the close matches of `name` among `known`, else `fallback`."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else fallback


def first_few(items: Iterable, n: int = 5) -> str:
    """'a, b, c, d, e (+3 more)': the first `n` items (in their order), for error messages."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


# -- state dicts -------------------------------------------------------------------------------------
def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                           *, optional: Iterable[str] = (), hint: str = "") -> nn.Module:
    """Load `state` into `model` only if it fits exactly; otherwise raise a CheckpointError naming the
    first missing keys, unused keys and shape mismatches, and load nothing.

    Keys in `optional` may be absent from `state` (the model keeps its own values: BN's
    `num_batches_tracked` from a foreign checkpoint). Values are cast to the model's dtypes.
    """
    target = model.state_dict()
    optional = set(optional)
    missing = [k for k in target if k not in state and k not in optional]
    unused = [k for k in state if k not in target]
    bad = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
           if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if missing or unused or bad:
        parts = ([f"missing in {source}: {first_few(missing)}"] if missing else []) + \
                ([f"unused from {source}: {first_few(unused)}"] if unused else []) + \
                ([f"shape mismatch ({source} vs model): {first_few(bad, 3)}"] if bad else [])
        raise CheckpointError("; ".join(parts) + (f" ({hint})" if hint else ""))
    full = {k: (state[k] if k in state else target[k]).to(target[k].dtype) for k in target}
    model.load_state_dict(full, strict=True)
    return model


# -- the machine -------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> the first GPU when there is one, else the CPU; 'cpu', 'cuda' or 'cuda:N' -> that device,
    checked to exist here (a ConfigError naming `device` otherwise)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise ConfigError(f"device {device!r}: this machine has {n} CUDA device{'s' if n != 1 else ''}"
                              f"{'' if n else ' (or torch was built without CUDA)'}; use cpu"
                              + (f" or cuda:0..{n - 1}" if n else ""))
    return dev


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(threads: int | None = None) -> dict:
    """What a measurement ran on: CPU, cores, GPU, threads in force, Python / torch / torchvision /
    ONNX Runtime versions, and the load average when it started."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": str(torch.__version__), "torchvision": torchvision.__version__,
            "threads": threads or torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:  # optional (the [onnx] extra), so imported here on purpose
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = "not installed"
    return info


def machine_line(info: dict | None = None) -> str:
    """One line for a table's caption: device, cores, threads and versions."""
    m = info or machine_info()
    dev = f"GPU {m['gpu']}, " if "gpu" in m else ""
    load = f", load average {m['load_avg_1_5_15'][0]} at the start" if "load_avg_1_5_15" in m else ""
    # Reports written by earlier versions recorded fewer fields (cpu_count, torch_threads): say what they have.
    cores = m.get("usable_cores", m.get("cores", m.get("cpu_count", "?")))
    threads = m.get("threads", m.get("torch_threads", "?"))
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "torchvision", "onnxruntime") if k in m)
    return f"machine: {dev}{m.get('cpu', 'unknown CPU')}, {cores} usable cores, threads={threads}{load} | {versions}"
