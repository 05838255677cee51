"""Our weights file format: safetensors tensors plus one typed `ModelCard` (config, class names,
preprocessing, source, metrics), and the preprocessing presets of published weights."""

from resnetkit.weights.card import ModelCard, Preprocessing, input_shape
from resnetkit.weights.io import load, load_backbone_weights, read_card, save_weights
from resnetkit.weights.presets import PRESETS, imagenet_class_names, preset

__all__ = ["PRESETS", "ModelCard", "Preprocessing", "imagenet_class_names", "input_shape", "load",
           "load_backbone_weights", "preset", "read_card", "save_weights"]
