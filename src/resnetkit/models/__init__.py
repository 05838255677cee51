"""ResNet models: block specs, units, the generator, the registry of named variants (classification and
segmentation: `create_model(name, **kw)` builds every one of them)."""

from resnetkit.models import segmentation, variants  # noqa: F401  (register the named models; variants first)
from resnetkit.models.blocks import (
    Block,
    basic_v1_block,
    basic_v2_block,
    bottleneck_block,
    resnet_v1_block,
    resnet_v2_block,
)
from resnetkit.models.features import FeatureInfo
from resnetkit.models.registry import (
    TASKS,
    ModelConfig,
    create_model,
    list_models,
    model_defaults,
    register_model,
    set_pretrained_loader,
)
from resnetkit.models.resnet import ResNet
from resnetkit.models.segmentation import HEADS, SegModel, segmentation_name, upsample_logits
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
    "HEADS", "TASKS", "Basic", "FeatureInfo", "Block", "Bottleneck", "ModelConfig", "ResNet", "SegModel", "basic_v1",
    "basic_v1_block", "basic_v2",
    "basic_v2_block", "bottleneck_block", "bottleneck_v1", "bottleneck_v2", "create_model", "list_models",
    "model_defaults", "plain_basic_v1", "plain_basic_v2", "plain_bottleneck_v1", "plain_bottleneck_v2",
    "register_model", "resnet_v1_block", "resnet_v2_block", "segmentation_name", "set_pretrained_loader",
    "upsample_logits",
]
