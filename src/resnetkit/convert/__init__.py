"""Converters from other frameworks' weight files to resnetkit, and `convert_file` to our safetensors format.

>>> from resnetkit.convert import from_tf_slim, from_torchvision, from_keras, convert_file
>>> model = from_tf_slim("resnet_v2_50.ckpt")                      # TF-slim checkpoint (V1 or V2 format)
>>> model = from_torchvision("resnet50-0676ba61.pth")               # torchvision state dict
>>> model = from_timm("model.safetensors", arch="resnet50d")        # timm state dict (hub or .pth)
>>> model = from_keras("resnet50v2_weights_tf_dim_ordering_tf_kernels.h5")  # Keras ResNetV2
>>> convert_file("resnet_v2_50_2017_04_14.tar.gz", "resnet_v2_50.safetensors")  # kind detected
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
import zipfile
from pathlib import Path

from torch import nn

from resnetkit._helpers import check_output
from resnetkit.convert.common import ConversionError
from resnetkit.convert.keras import from_keras
from resnetkit.convert.tf_slim import from_tf_slim
from resnetkit.convert.timm import from_timm
from resnetkit.convert.torchvision import from_torchvision
from resnetkit.download import safe_extract_tar
from resnetkit.errors import MissingFileError
from resnetkit.weights import Preprocessing, imagenet_class_names, preset, save_weights

__all__ = ["ConversionError", "KINDS", "convert", "convert_file", "detect_kind", "find_tf_checkpoint", "from_keras",
           "from_tf_slim", "from_timm", "from_torchvision"]

KINDS = ("tf-slim", "torchvision", "keras", "timm")  # timm is never detected (its .pth is torchvision's format)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TF_TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")  # LevelDB table footer: V1 .ckpt and V2 .index


def detect_kind(src: str | os.PathLike) -> str:
    """'tf-slim', 'tf-slim-tar', 'keras' or 'torchvision', from the file's bytes (its name only when they
    match no known format)."""
    path = Path(src)
    if path.is_dir():
        return "tf-slim"
    if not path.exists() and Path(f"{path}.index").is_file():
        return "tf-slim"  # a V2 checkpoint prefix
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 8))
        tail = f.read(8)
    if head.startswith(HDF5_MAGIC):
        return "keras"
    if tail == TF_TABLE_MAGIC:
        return "tf-slim"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                return "keras" if "model.weights.h5" in z.namelist() else "torchvision"
        except zipfile.BadZipFile:
            return "torchvision"  # let torch.load name the problem
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
        return "torchvision"
    if head.startswith(b"\x1f\x8b") or tarfile.is_tarfile(path):
        return "tf-slim-tar"
    # The bytes do not say (a truncated file loses its footer): let the name pick the reader, whose
    # error then says what is wrong with the file.
    for pattern, kind in ((r"\.(ckpt|index)$|\.ckpt-\d+$", "tf-slim"), (r"\.(h5|hdf5|keras)$", "keras"),
                          (r"\.(pth|pt|bin)$", "torchvision")):
        if re.search(pattern, path.name):
            return kind
    raise ConversionError(f"{path}: cannot tell what this file is (not a TF checkpoint, HDF5, zip, pickle or tar "
                          "archive); pass kind='tf-slim'|'torchvision'|'keras' (CLI: --from)")


def find_tf_checkpoint(folder: str | os.PathLike) -> Path:
    """The one TF checkpoint in a folder (an extracted slim tarball): a V2 prefix or a V1 `.ckpt` file."""
    folder = Path(folder)
    found = sorted(p.with_suffix("") for p in folder.rglob("*.index"))
    if not found:
        found = sorted(p for p in folder.rglob("*.ckpt") if p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ConversionError(f"{folder}: {what} TensorFlow checkpoints found (expected one *.index or *.ckpt)")
    return found[0]


def convert(src: str | os.PathLike, kind: str | None = None, arch: str | None = None,
            drop_background: bool = False) -> tuple[nn.Module, str]:
    """Any supported file -> (our model, its kind). `kind` is detected from the bytes when not given."""
    kind = kind or detect_kind(src)
    if kind == "tf-slim" and Path(src).is_file() and tarfile.is_tarfile(src):
        kind = "tf-slim-tar"  # --from tf-slim on the published tarball
    if kind == "tf-slim-tar":
        with tempfile.TemporaryDirectory(prefix="resnetkit-") as tmp:
            folder = safe_extract_tar(src, Path(tmp) / "ckpt")
            return from_tf_slim(find_tf_checkpoint(folder), arch=arch, drop_background=drop_background), "tf-slim"
    if drop_background and kind != "tf-slim":
        raise ConversionError("drop_background only applies to TF-slim checkpoints (1001 classes)")
    if kind == "tf-slim":
        path = Path(src)
        if path.is_dir():
            path = find_tf_checkpoint(path)
        return from_tf_slim(path, arch=arch, drop_background=drop_background), kind
    if kind == "torchvision":
        return from_torchvision(src, arch=arch), kind
    if kind == "timm":
        return from_timm(src, arch=arch), kind
    if kind == "keras":
        return from_keras(src, arch=arch), kind
    raise ConversionError(f"unknown source kind {kind!r}; one of {', '.join(KINDS)}")


def default_preset(model: nn.Module, kind: str) -> str:
    """The preprocessing a converted file most likely expects: its publisher's recipe."""
    if kind == "tf-slim":
        return "vgg" if model.config.arch.startswith("resnet_v1") else "inception"
    if kind == "timm" and model.config.arch.endswith("_bit"):
        return "keras_tf"  # BiT: inputs scaled to [-1, 1] (timm's IMAGENET_INCEPTION_MEAN / STD)
    return {"torchvision": "torchvision", "keras": "keras_tf", "timm": "torchvision"}[kind]


def convert_file(src: str | os.PathLike, out: str | os.PathLike, *, kind: str | None = None, arch: str | None = None,
                 drop_background: bool = False, preprocessing: str | Preprocessing | None = None,
                 class_names: list[str] | None = None, overwrite: bool = False) -> Path:
    """Convert `src` and write our self-describing safetensors file to `out` (atomically: a failed
    conversion leaves no file). ImageNet class names are attached when the class count is 1000 or 1001
    and `class_names` is not given; `preprocessing` is a preset name or a Preprocessing (default: the
    source's publisher's recipe). An existing `out` is replaced only with `overwrite`, never `src` itself."""
    check_output(out, inputs=[src], overwrite=overwrite)
    model, kind = convert(src, kind, arch, drop_background)
    if getattr(model, "config", None) is None:
        raise ConversionError(f"{src}: the network matches no registered architecture, so the file could not be "
                              "reloaded by name; convert it from Python (resnetkit.convert) instead")
    n = model.num_classes
    if class_names is not None and len(class_names) != n:
        raise ConversionError(f"{len(class_names)} class names given, the model has {n} classes")
    if class_names is None and n in (1000, 1001):
        class_names = imagenet_class_names(n)
    if not isinstance(preprocessing, Preprocessing):
        preprocessing = preset(preprocessing or default_preset(model, kind))
    return save_weights(model, out, class_names=class_names, preprocessing=preprocessing,
                        source=f"converted from {kind} {Path(src).name}")
