"""Named variants: every model is a registered builder over the one ResNet class (timm's pattern)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from resnetkit._helpers import did_you_mean
from resnetkit.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
TASKS = ("classification", "segmentation")
# Set by resnetkit.pretrained when the package is imported: (name, pretrained, **kwargs) -> model. The
# registry stays free of downloads and converters (a floor above); create_model hands `pretrained` over.
_pretrained_loader: Callable[..., nn.Module] | None = None


def set_pretrained_loader(fn: Callable[..., nn.Module]) -> None:
    """Install the function that resolves `create_model(name, pretrained=...)` (resnetkit.pretrained)."""
    global _pretrained_loader
    _pretrained_loader = fn


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


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, input_size: int = 224,
                   num_classes: int = 1000, family: str = "", task: str = "classification") -> Callable:
    """Decorator: register `fn` under `name` (default: its function name) with its default input size,
    number of classes, family (layout) and task."""

    def wrap(f):
        key = name or f.__name__
        _REGISTRY[key] = f
        _DEFAULTS[key] = dict(input_size=input_size, num_classes=num_classes, family=family, task=task)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a shell pattern ('resnet_v2_*') and a task."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    names = sorted(_REGISTRY, key=_natural_key)
    return [n for n in names if (pattern is None or fnmatch.fnmatch(n, pattern))
            and (task is None or _DEFAULTS[n]["task"] == task)]


def model_defaults(name: str) -> dict[str, Any]:
    """Default input size, number of classes, family and task of a registered model."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY, "resnetkit.list_models() (or `resnetkit models`) lists them")
        raise ConfigError(f"unknown model {name!r}: {hint}")


def _check_sizes(kwargs: dict) -> None:
    """The counts every builder takes, checked by name before anything is built."""
    k = kwargs.get("num_classes", 1)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ConfigError(f"num_classes must be a positive integer (0 or None: no classifier), got {k!r}")
    c = kwargs.get("in_chans", 3)
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ConfigError(f"in_chans must be a positive integer, got {c!r}")


def create_model(name: str, pretrained: bool | str | None = None, **kwargs: Any) -> nn.Module:
    """Build any registered model, classification or segmentation; `model.config` records how.

    `pretrained`: None/False for fresh weights; True for the first registered weights of `name`; a
    catalogue tag ('resnet50.tv_in1k', see resnetkit.pretrained.list_pretrained), downloaded, checked
    and converted once into the cache; or the path of one of our weights files. Pretrained models come
    back in eval mode with `.card` (class names, preprocessing, source). Keyword arguments go to the
    builder (num_classes, in_chans, output_stride, global_pool, ...). A bad name or value raises a
    ConfigError, which is a ValueError.
    """
    _check_name(name)
    _check_sizes(kwargs)
    if pretrained:
        if _pretrained_loader is None:
            raise ConfigError("pretrained weights need resnetkit.pretrained; `import resnetkit` installs it")
        return _pretrained_loader(name, pretrained, **kwargs)
    try:
        model = _REGISTRY[name](**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # an impossible output stride, an unknown keyword
        raise ConfigError(f"{name}: {e}") from None
    model.config = ModelConfig(name, dict(kwargs))
    return model
