"""resnetkit: Residual Networks for PyTorch, faithful to He et al. and to TF-slim.

>>> import resnetkit
>>> model = resnetkit.create_model("resnet_v2_50", num_classes=1001)          # any registered model
>>> model = resnetkit.create_model("deeplabv3_resnet_v2_101", output_stride=16)  # segmentation too
>>> model = resnetkit.load("runs/demo/model.safetensors")                      # model.card says what it is
>>> resnetkit.predict(model, ["cat.jpg"]); resnetkit.evaluate_file(path, "fashion-mnist")
>>> from resnetkit.train import TrainConfig, train   # (resnetkit.train is the training package)
"""

import importlib.metadata

from resnetkit import pretrained  # noqa: F401  (installs the resolver behind create_model(pretrained=...))
from resnetkit.errors import CheckpointError, ConfigError, DependencyError, DownloadError, MissingFileError, UserError
from resnetkit.export import predict, predict_folder, quantize, segment
from resnetkit.models import Block, ModelConfig, ResNet, create_model, list_models
from resnetkit.train import TrainConfig, evaluate, evaluate_file, evaluate_segmentation
from resnetkit.weights import ModelCard, Preprocessing, load, read_card, save_weights

try:
    __version__ = importlib.metadata.version("resnetkit")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Block", "CheckpointError", "ConfigError", "DependencyError", "DownloadError", "MissingFileError",
           "ModelCard", "ModelConfig", "Preprocessing", "ResNet", "TrainConfig", "UserError", "__version__",
           "create_model", "evaluate", "evaluate_file", "evaluate_segmentation", "list_models", "load", "predict",
           "predict_folder", "quantize", "read_card", "save_weights", "segment"]
