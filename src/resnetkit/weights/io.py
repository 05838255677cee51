"""Our weights file: safetensors tensors plus string metadata that say what the file is.

Metadata keys (all JSON strings except `resnetkit.source`):
  resnetkit.format_version  "1"
  resnetkit.config          the model's ModelConfig.to_dict(): {"arch": ..., "kwargs": {...}}
  resnetkit.class_names     ["T-shirt/top", ...] or null
  resnetkit.preprocessing   {"size": [28, 28], "mean": [...], "std": [...], "grayscale": true} or null
  resnetkit.source          free text: where the weights came from (a run dir, a converted checkpoint)
  resnetkit.extra           any other JSON the caller wants to keep (metrics, the training command)
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from resnetkit.errors import UserError

FORMAT_VERSION = "1"
_KEYS = ("config", "class_names", "preprocessing", "extra")


def save_weights(model: torch.nn.Module, path: str | os.PathLike, *, class_names: list[str] | None = None,
                 preprocessing: dict | None = None, source: str | None = None, extra: dict | None = None) -> Path:
    """Write `model`'s state dict and metadata to `path` atomically (temp file, then rename)."""
    path = Path(path)
    config = getattr(model, "config", None)
    if config is None:
        raise UserError("the model has no .config; build it with resnetkit.create_model so the file can "
                        "say which architecture it holds")
    meta = {
        "resnetkit.format_version": FORMAT_VERSION,
        "resnetkit.config": json.dumps(config.to_dict()),
        "resnetkit.class_names": json.dumps(list(class_names) if class_names is not None else None),
        "resnetkit.preprocessing": json.dumps(preprocessing),
        "resnetkit.source": source or "",
        "resnetkit.extra": json.dumps(extra or {}),
    }
    # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata with JSON values decoded: {"config", "class_names", "preprocessing", "source",
    "extra", "format_version"}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a safetensors file ({e})") from e
    if "resnetkit.config" not in raw:
        raise UserError(f"{path}: safetensors file without resnetkit metadata (no 'resnetkit.config'); "
                        "save it with resnetkit.weights.io.save_weights or convert it first")
    out = {"format_version": raw.get("resnetkit.format_version"), "source": raw.get("resnetkit.source", "")}
    for k in _KEYS:
        try:
            out[k] = json.loads(raw.get(f"resnetkit.{k}", "null"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: metadata 'resnetkit.{k}' is not valid JSON ({e})") from e
    if out["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path}: format version {out['format_version']!r}, this resnetkit reads {FORMAT_VERSION!r}")
    return out


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a weights file describes, load its tensors, and return it in eval mode.

    The model gets `.class_names`, `.preprocessing` and `.weights_metadata` attributes from the file.
    Every key must match and every shape must agree; otherwise a UserError names the first few.
    """
    import resnetkit  # the model registry; imported here so weights/ does not import models at load time

    path = Path(path)
    meta = read_metadata(path)
    cfg = meta["config"]
    if not isinstance(cfg, dict) or "arch" not in cfg:
        raise UserError(f"{path}: 'resnetkit.config' lacks 'arch': {cfg!r}")
    try:
        if cfg["arch"] == "segmentation":  # backbone + dense head: built by resnetkit.segmentation
            from resnetkit.segmentation import create_segmentation_model as build
        else:
            build = functools.partial(resnetkit.create_model, cfg["arch"])
        model = build(**cfg.get("kwargs", {}))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: cannot build model {cfg['arch']!r} from its config ({e})") from e
    state = load_file(str(path), device=str(map_location))
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        parts = ([f"missing keys: {_few(missing)}"] if missing else []) + (
            [f"unexpected keys: {_few(unexpected)}"] if unexpected else [])
        raise UserError(f"{path}: does not fit {cfg['arch']}; " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise UserError(f"{path}: shape mismatch for {cfg['arch']} (file vs model): " + ", ".join(bad[:5]))
    model.load_state_dict(state)
    model.to(map_location).eval()
    model.class_names = meta["class_names"]
    model.preprocessing = meta["preprocessing"]
    model.weights_metadata = meta
    return model
