"""resnetkit: Residual Networks for PyTorch, faithful to He et al. and to TF-slim."""

from resnetkit.errors import UserError
from resnetkit.models import Block, ModelConfig, ResNet, create_model, list_models

__version__ = "0.1.0"

__all__ = ["Block", "ModelConfig", "ResNet", "UserError", "create_model", "list_models", "__version__"]
