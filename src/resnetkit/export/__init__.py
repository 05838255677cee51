"""Inference: BN folding and preparation, export to ONNX / TorchScript / torch.export, backends."""

from resnetkit.export.fold import fold_batch_norms, fold_conv_bn, prepare_for_inference

__all__ = ["fold_batch_norms", "fold_conv_bn", "prepare_for_inference"]
