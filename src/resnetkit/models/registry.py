"""Named variants: every model is a registered builder over the one ResNet class (timm's pattern)."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from resnetkit.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a model is: its registered name and the options it was built with (JSON-serialisable).

    Saved in every checkpoint so that a file says what it is; `build()` makes the same model again.
    """

    arch: str
    kwargs: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"arch": self.arch, "kwargs": dict(self.kwargs)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(arch=d["arch"], kwargs=dict(d.get("kwargs", {})))

    def build(self) -> nn.Module:
        return create_model(self.arch, **self.kwargs)


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_size: int = 224,
                   num_classes: int = 1000, family: str = "") -> Callable:
    """Decorator: register `fn` under its function name with its default input size and classes."""

    def wrap(f):
        _REGISTRY[f.__name__] = f
        _DEFAULTS[f.__name__] = dict(input_size=input_size, num_classes=num_classes, family=family)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a shell pattern ('resnet_v2_*')."""
    names = sorted(_REGISTRY, key=_natural_key)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_defaults(name: str) -> dict[str, Any]:
    """Default input size, number of classes and family of a registered model."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `resnetkit models` for the list"
        raise UserError(f"unknown model {name!r}: {hint}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with fresh weights; `model.config` records how.

    Keyword arguments go to the ResNet class (num_classes, in_chans, output_stride, global_pool, ...).
    """
    _check_name(name)
    try:
        model = _REGISTRY[name](**kwargs)
    except ValueError as e:  # impossible output stride and the like: the user's to fix
        raise UserError(f"{name}: {e}") from None
    model.config = ModelConfig(name, dict(kwargs))
    return model
