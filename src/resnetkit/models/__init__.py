"""ResNet models: block specs, units, the generator, and the registry of named variants."""

from resnetkit.models import variants  # noqa: F401  (registers the named models)
from resnetkit.models.blocks import (
    Block,
    basic_v1_block,
    basic_v2_block,
    bottleneck_block,
    resnet_v1_block,
    resnet_v2_block,
)
from resnetkit.models.registry import ModelConfig, create_model, list_models, model_defaults, register_model
from resnetkit.models.resnet import ResNet
from resnetkit.models.units import (
    Basic,
    Bottleneck,
    basic_v1,
    basic_v2,
    bottleneck_v1,
    bottleneck_v2,
    plain_basic_v1,
    plain_basic_v2,
    plain_bottleneck_v1,
    plain_bottleneck_v2,
)

__all__ = [
    "Basic", "Block", "Bottleneck", "ModelConfig", "ResNet", "basic_v1", "basic_v1_block", "basic_v2",
    "basic_v2_block", "bottleneck_block", "bottleneck_v1", "bottleneck_v2", "create_model", "list_models",
    "model_defaults", "plain_basic_v1", "plain_basic_v2", "plain_bottleneck_v1", "plain_bottleneck_v2",
    "register_model", "resnet_v1_block", "resnet_v2_block",
]
