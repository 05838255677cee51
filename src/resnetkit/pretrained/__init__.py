"""Pretrained weights: the catalogue (plain data) and the loader that downloads, verifies and converts.

Importing this package installs its resolver in the model registry, so that
`resnetkit.create_model(name, pretrained=TAG_OR_FILE)` works wherever the registry is used.
"""

from resnetkit.models import set_pretrained_loader
from resnetkit.pretrained.catalogue import REGISTRY, PretrainedWeights, get_weights, list_pretrained
from resnetkit.pretrained.loader import load_pretrained, pretrained_model

set_pretrained_loader(pretrained_model)

__all__ = ["REGISTRY", "PretrainedWeights", "get_weights", "list_pretrained", "load_pretrained", "pretrained_model"]
