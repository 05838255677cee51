"""resnetkit: Residual Networks for PyTorch, faithful to He et al. and to TF-slim."""

from typing import Any

from torch import nn

from resnetkit import models as _models
from resnetkit.errors import UserError
from resnetkit.models import Block, ModelConfig, ResNet, list_models
from resnetkit.weights.io import load

__version__ = "0.1.0"

__all__ = ["Block", "ModelConfig", "ResNet", "UserError", "create_model", "list_models", "load", "__version__"]


def create_model(name: str, pretrained: bool | str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model; `model.config` records how.

    `pretrained`: None/False for fresh weights; True for the first registered weights of `name`; a
    registry tag ('resnet50.tv_in1k', see resnetkit.weights.registry.list_pretrained) to download,
    check and convert once into the cache; or a path to one of our safetensors files. Pretrained models
    come back in eval mode with `.class_names` and `.preprocessing`. Keyword arguments go to the ResNet
    class (num_classes, output_stride, global_pool, ...).
    """
    if not pretrained:
        return _models.create_model(name, **kwargs)
    from resnetkit.weights.registry import pretrained_model  # models never import weights; this level may

    return pretrained_model(name, pretrained, **kwargs)
