"""Weights: our safetensors file format (io) and, later, the pretrained registry."""

from resnetkit.weights.io import load, read_metadata, save_weights

__all__ = ["load", "read_metadata", "save_weights"]
