"""int8 post-training quantisation, two ways: ONNX Runtime (static, QDQ format, per-channel weights: one
portable .onnx file, `resnetkit export --int8`) and PyTorch's own x86 flow (PT2E with the X86 inductor
quantiser, then torch.compile: the `int8` backend). Both run their int8 convolutions on VNNI where the
CPU has it. (benchmarks/inference.py measures both against the fp32 rows.)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnetkit._helpers import atomic_write, check_output
from resnetkit.data import load_dataset, normalize
from resnetkit.errors import ConfigError, DependencyError
from resnetkit.export.ort import ort_session, quiet, require_onnxruntime
from resnetkit.weights import Preprocessing

log = logging.getLogger(__name__)


def _split(spec: str, pre: Preprocessing | None, data_dir: str | None, train: bool):
    size, channels = (pre.size[0], pre.channels) if pre is not None and pre.size else (32, 3)
    split = load_dataset(spec, data_dir, image_size=size, channels=channels)[0 if train else 1]
    # normalised as the model expects, not with the dataset's own statistics
    return dataclasses.replace(split, mean=pre.mean, std=pre.std) if pre is not None else split


def calibration_images(spec: str, preprocessing: Preprocessing | None, n: int = 512, seed: int = 0,
                       data_dir: str | None = None) -> torch.Tensor:
    """`n` images from the TRAINING split of dataset `spec`, normalised as the model expects: (n, C, H, W)."""
    train = _split(spec, preprocessing, data_dir, train=True)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return normalize(train.images[idx], torch.tensor(train.mean), torch.tensor(train.std))


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
        raise ConfigError(f"calibration images must be a non-empty (N, C, H, W) batch, got {tuple(calib.shape)}")

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str):
            self.batches = iter([{input_name: b.contiguous().numpy().astype(np.float32)}
                                 for b in calib.split(batch_size)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="resnetkit-quant-") as tmpdir, atomic_write(dst) as tmp:
        pre = Path(tmpdir) / "preprocessed.onnx"
        with quiet("onnxruntime", "root"):
            # Shape inference and ORT's basic graph optimisations first (ONNX Runtime's recommendation).
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Reader(input_name), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
    return dst


TORCHAO_HINT = "pip install 'resnetkit[int8]' (torchao)"


@torch.no_grad()
def quantize_pt2e(model: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """`model` quantised to int8 by PyTorch's PT2E flow for x86 and compiled; run under inductor's
    freezing (the int8 backend does), inductor lowers the quantised convolutions to oneDNN's int8
    kernels. Weights: int8 per channel; activations: uint8, calibrated on `calib` (N, C, H, W). The
    batch dimension stays dynamic in the graph.

    PT2E moved from torch.ao to torchao (torch 2.10 and later), hence the optional dependency. The
    graph is captured with strict (dynamo) export: the quantiser finds convolutions and ReLUs by the
    source metadata that only dynamo records.
    """
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise DependencyError(f"the int8 backend needs torchao: {TORCHAO_HINT}") from None
    if calib.ndim != 4 or len(calib) < 2:
        raise ConfigError(f"calibration images must be an (N, C, H, W) batch with N >= 2, got {tuple(calib.shape)}")
    device = next(model.parameters()).device
    batches = calib.to(device).split(batch_size)
    # torch.export specialises dimensions of size 1, so the example batch has at least 2 images.
    graph = torch.export.export(copy.deepcopy(model).eval(), (calib[:2].to(device),), strict=True,
                                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    for b in batches:
        prepared(b)  # observers record activation ranges
    return torch.compile(convert_pt2e(prepared))


@torch.no_grad()
def quantize(model: nn.Module, fp32_onnx: str | os.PathLike, calib_data: str, *, out: str | os.PathLike | None = None,
             calib_n: int = 512, eval_n: int = 0, data_dir: str | None = None, overwrite: bool = False) -> dict:
    """Quantise the ONNX export `fp32_onnx` of `model` to int8 (MODEL.int8.onnx beside it, or `out`),
    calibrating on `calib_n` training images of dataset `calib_data` preprocessed as the model's card
    says. With `eval_n`, both files are run by ONNX Runtime on the first `eval_n` test images.

    Returns {"path", "calib_n", and with eval_n: "n", "top1_fp32", "top1_int8", "agreement"}.
    """
    if calib_n < 1 or eval_n < 0:
        raise ConfigError(f"calib_n ({calib_n}) must be >= 1 and eval_n ({eval_n}) >= 0")
    pre = model.card.preprocessing if getattr(model, "card", None) is not None else None
    calib = calibration_images(calib_data, pre, n=calib_n, data_dir=data_dir)
    if pre is not None and pre.size is not None and tuple(calib.shape[1:]) != (pre.channels, *pre.size):
        raise ConfigError(f"{calib_data} images are {tuple(calib.shape[1:])}, the model takes "
                          f"{(pre.channels, *pre.size)}")
    fp32_onnx = Path(fp32_onnx)
    qpath = check_output(out or fp32_onnx.with_name(fp32_onnx.name.removesuffix(".onnx") + ".int8.onnx"),
                         inputs=[fp32_onnx], overwrite=overwrite)
    quantize_onnx(fp32_onnx, qpath, calib)
    result = {"path": qpath, "calib_n": len(calib)}
    if eval_n:
        test = _split(calib_data, pre, data_dir, train=False)
        n = min(eval_n, len(test))
        preds = {}
        for name, path in (("fp32", fp32_onnx), ("int8", qpath)):
            session = ort_session(path)
            input_name = session.get_inputs()[0].name
            preds[name] = torch.cat([
                torch.from_numpy(session.run(None, {input_name: normalize(
                    test.images[i:min(i + 256, n)], torch.tensor(test.mean), torch.tensor(test.std)).numpy()})[0]
                ).argmax(1) for i in range(0, n, 256)])
        labels = test.labels[:n]
        result.update(n=n, top1_fp32=float((preds["fp32"] == labels).float().mean()),
                      top1_int8=float((preds["int8"] == labels).float().mean()),
                      agreement=float((preds["fp32"] == preds["int8"]).float().mean()))
    return result
