"""Inference: BN folding, export to ONNX / TorchScript / torch.export, backends, int8 quantisation, and the
library functions behind `resnetkit predict`, `segment` and `export --int8`."""

from resnetkit.export.backends import BACKENDS, make_backend
from resnetkit.export.explain import explain, grad_cam
from resnetkit.export.fold import fold_batch_norms, fold_conv_bn, prepare_for_inference
from resnetkit.export.formats import FORMATS, export_file, export_model
from resnetkit.export.predict import predict, predict_folder
from resnetkit.export.quantize import quantize, quantize_onnx
from resnetkit.export.segment import segment

__all__ = ["BACKENDS", "FORMATS", "explain", "export_file", "export_model", "fold_batch_norms", "fold_conv_bn",
           "grad_cam", "make_backend", "predict", "predict_folder", "prepare_for_inference", "quantize",
           "quantize_onnx", "segment"]
