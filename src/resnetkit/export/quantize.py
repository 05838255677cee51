"""int8 post-training quantisation with ONNX Runtime: static, QDQ format, per-channel weights.

Why ONNX Runtime and not PyTorch's PT2E x86 flow: our fastest fp32 CPU path is already ONNX Runtime on
the folded export, its int8 convolutions use VNNI where the CPU has it, and the QDQ model stays one
portable .onnx file. (benchmarks/inference.py measures the int8 row against the fp32 ones.)
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from resnetkit.errors import UserError
from resnetkit.export.backends import require_onnxruntime
from resnetkit.export.formats import _quiet, atomic_path

log = logging.getLogger(__name__)


def calibration_images(spec: str, preprocessing: dict | None, n: int = 512, seed: int = 0,
                       data_dir: str | None = None) -> torch.Tensor:
    """`n` images from the TRAINING split of dataset `spec`, normalised as the model expects: (n, C, H, W)."""
    from resnetkit.data import load_dataset, normalize

    pre = preprocessing or {}
    size = (pre.get("size") or [32])[0]
    train, _ = load_dataset(spec, data_dir, image_size=size, channels=1 if pre.get("grayscale") else 3)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    mean, std = pre.get("mean") or train.mean, pre.get("std") or train.std
    return normalize(train.images[idx], torch.tensor(mean), torch.tensor(std))


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calib: torch.Tensor, *, batch_size: int = 32,
                  per_channel: bool = True) -> Path:
    """Quantise the fp32 ONNX model `src` to int8 at `dst` (atomically), calibrating on `calib` (N, C, H, W).

    Weights: int8 per output channel (symmetric); activations: uint8, MinMax calibration; QDQ format,
    which ONNX Runtime fuses into integer convolutions.
    """
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib.ndim != 4 or len(calib) == 0:
        raise UserError(f"calibration images must be a non-empty (N, C, H, W) batch, got {tuple(calib.shape)}")

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str):
            self.batches = iter([{input_name: b.contiguous().numpy().astype(np.float32)}
                                 for b in calib.split(batch_size)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="resnetkit-quant-") as tmpdir, atomic_path(dst) as tmp:
        pre = Path(tmpdir) / "preprocessed.onnx"
        with _quiet("onnxruntime", "root"):
            # Shape inference and ORT's basic graph optimisations first (ONNX Runtime's recommendation).
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Reader(input_name), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
    return dst
