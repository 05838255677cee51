"""Our weights file: safetensors tensors plus one metadata record, the model's `ModelCard`.

Metadata keys (strings, as safetensors stores them):
  resnetkit.format_version  "2"
  resnetkit.card            ModelCard.to_dict() as JSON: {"config": {"arch", "kwargs"}, "class_names",
                            "preprocessing", "source", "metrics", "extra"}
  resnetkit.tensors_sha256  sha256 over every tensor's name, dtype, shape and bytes (in name order),
                            checked on load: a flipped bit is reported, never used
Files of layout "1" (resnetkit 0.1: `resnetkit.config`, `.class_names`, `.preprocessing`, `.source`,
`.extra` as separate keys; segmentation under arch "segmentation") are read too.

`load(path)` rebuilds whatever the card's config names through the model registry, loads the tensors
strictly and sets `model.card`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from resnetkit._helpers import atomic_write, load_state_dict_strict
from resnetkit.errors import CheckpointError, ConfigError, MissingFileError
from resnetkit.models import create_model, segmentation_name
from resnetkit.weights.card import ModelCard, Preprocessing

FORMAT_VERSION = "2"
# Layout 1 kept its measurements in `extra`; these keys become the card's metrics when such a file is read.
_LEGACY_METRICS = ("test_top1_err", "val_miou", "val_pixel_acc", "val_iou", "top1", "top5")


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and raw bytes, in name order (any dtype, bf16 too)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_weights(model: nn.Module, path: str | os.PathLike, *, card: ModelCard | None = None,
                 class_names: list[str] | None = None, preprocessing: Preprocessing | dict | None = None,
                 source: str | None = None, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write `model`'s tensors and card to `path` atomically (temp file, then rename).

    The card is `card`, else the model's own `.card`, else an empty one; the keyword arguments given
    replace its fields. Its config is always the model's `.config`.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError("the model has no .config; build it with resnetkit.create_model so the file can say "
                          "which architecture it holds")
    card = card or getattr(model, "card", None) or ModelCard(config)
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    changes = dict(class_names=tuple(class_names) if class_names is not None else None,
                   preprocessing=preprocessing, source=source, metrics=metrics, extra=extra)
    card = card.replace(config=config, **{k: v for k, v in changes.items() if v is not None})
    # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"resnetkit.format_version": FORMAT_VERSION, "resnetkit.card": json.dumps(card.to_dict()),
            "resnetkit.tensors_sha256": tensors_sha256(tensors)}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return Path(path)


def _legacy_card(raw: dict, path: Path) -> ModelCard:
    """A layout-1 file's separate keys -> a ModelCard."""
    fields = {}
    for key in ("config", "class_names", "preprocessing", "extra"):
        try:
            fields[key] = json.loads(raw.get(f"resnetkit.{key}", "null"))
        except (json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: metadata 'resnetkit.{key}' is not valid JSON ({e})") from None
    cfg, extra = fields["config"], fields["extra"] or {}
    if isinstance(cfg, dict) and cfg.get("arch") == "segmentation":  # 0.1 built these outside the registry
        kw = dict(cfg.get("kwargs") or {})
        name = segmentation_name(kw.pop("head", "slim"), kw.pop("backbone", "resnet18"))
        if name.startswith("slimseg_"):
            for k in ("aspp_channels", "aspp_rates", "image_pooling"):
                kw.pop(k, None)
        cfg = {"arch": name, "kwargs": kw}
    metrics = {k: extra.pop(k) for k in _LEGACY_METRICS if k in extra} if isinstance(extra, dict) else {}
    return ModelCard.from_dict({**fields, "config": cfg, "source": raw.get("resnetkit.source", ""),
                                "metrics": metrics, "extra": extra})


def _open(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) from the header alone."""
    if not path.is_file():
        raise MissingFileError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
                raise ValueError("metadata values must be strings")
            return meta, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None


def read_card(path: str | os.PathLike) -> ModelCard:
    """The ModelCard of a weights file (reads the header only, not the tensors)."""
    path = Path(path)
    return _card(_open(path)[0], path)


def _card(raw: dict[str, str], path: Path) -> ModelCard:
    version = raw.get("resnetkit.format_version")
    if version == FORMAT_VERSION and "resnetkit.card" in raw:
        try:
            return ModelCard.from_dict(json.loads(raw["resnetkit.card"]))
        except (json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: metadata 'resnetkit.card' is not valid JSON ({e})") from None
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if version == "1" and "resnetkit.config" in raw:
        try:
            return _legacy_card(raw, path)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if "resnetkit.config" not in raw and "resnetkit.card" not in raw:
        raise CheckpointError(f"{path}: a safetensors file without resnetkit metadata; save it with "
                              "resnetkit.save_weights, or convert it first (resnetkit.convert)")
    raise CheckpointError(f"{path}: format version {version!r}; this resnetkit reads 1 and {FORMAT_VERSION}")


def _tensors(path: Path, raw: dict[str, str], allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors on the CPU, checked against the stored checksum and (unless allowed) for NaN/Inf."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read its tensors ({e})") from None
    expected = raw.get("resnetkit.tensors_sha256")
    if expected is not None and tensors_sha256(tensors) != expected:
        raise CheckpointError(f"{path}: its tensors do not match the checksum stored with them (the file was "
                              "corrupted or edited after it was written); use a good copy")
    if not allow_nonfinite:
        bad = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if bad is not None:
            raise CheckpointError(f"{path}: tensor {bad} holds NaN or Inf values (a diverged run?); pass "
                                  "allow_nonfinite=True (CLI: --allow-nonfinite) to load it anyway")
    return tensors


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_nonfinite: bool = False
         ) -> nn.Module:
    """Rebuild the model a weights file describes (through the registry), load its tensors and return it
    in eval mode with `model.card`. Every key must match and every shape agree, the tensors must match
    the stored checksum and be finite (unless `allow_nonfinite`); otherwise a CheckpointError says which."""
    path = Path(path)
    raw, shapes = _open(path)
    card = _card(raw, path)
    # The card's config is checked on the meta device first (no memory): a hostile file whose config
    # asks for a billion classes must fail on its shapes, not allocate them.
    try:
        with torch.device("meta"):
            skeleton = create_model(card.config.arch, **card.config.kwargs)
    except (ConfigError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot build the model its card describes ({e})") from None
    load_state_dict_strict(skeleton, {k: torch.empty(s, device="meta") for k, s in shapes.items()},
                           source=str(path), hint=f"the file does not fit {card.arch}")
    k = getattr(skeleton, "num_classes", None)
    if card.class_names is not None and k and len(card.class_names) != k:
        raise CheckpointError(f"{path}: {len(card.class_names)} class names for a model of {k} classes")
    model = create_model(card.config.arch, **card.config.kwargs)
    load_state_dict_strict(model, _tensors(path, raw, allow_nonfinite), source=str(path),
                           hint=f"the file does not fit {card.arch}")
    model.to(map_location).eval()
    model.card = card
    return model


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy a classification weights file (ours) into a segmentation model's `backbone`, dropping its
    logits. Every other tensor must fit the backbone exactly (CheckpointError). Returns the dropped keys."""
    path = Path(path)
    raw = _open(path)[0]
    card = _card(raw, path)  # checks that the file is ours
    if card.task != "classification":
        raise CheckpointError(f"{path}: holds {card.arch}, a {card.task} model, not a classification backbone")
    state = _tensors(path, raw)
    dropped = sorted(k for k in state if k.startswith("logits."))
    state = {k: v for k, v in state.items() if k not in dropped}
    load_state_dict_strict(model.backbone, state, source=str(path),
                           hint=f"it holds {card.arch}, which does not fit this backbone")
    return dropped
