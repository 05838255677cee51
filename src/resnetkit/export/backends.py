"""Inference backends selected by name: `eager`, `channels_last`, `compile`, `onnxruntime`, `onnxruntime-int8`.

A backend is an nn.Module wrapping a prepared model (or an ONNX Runtime session), so code written for a
model (`evaluate`, `predict`) takes one unchanged: it maps an (N, C, H, W) float tensor to logits.
`setup_s` records what preparing it cost (folding, compiling, exporting), which benchmarks report apart.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnetkit.errors import UserError
from resnetkit.export.fold import prepare_for_inference

log = logging.getLogger(__name__)

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8")
ONNX_HINT = "pip install 'resnetkit[onnx]'"


def require_onnxruntime():
    """Import onnxruntime or raise a UserError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"the onnxruntime backend needs ONNX Runtime: {ONNX_HINT}") from None
    return onnxruntime


ORT_LEVELS = ("disable", "basic", "extended", "all")


def ort_session(path: str | os.PathLike, threads: int | None = None, optimized_path: str | None = None,
                level: str = "all"):
    """An ONNX Runtime CPU session tuned for throughput: all graph optimisations (conv+BN+ReLU fusion,
    NCHWc layouts), sequential execution, `threads` intra-op threads, no inter-op pool.

    `level` lowers the graph optimisation level ('basic': constant folding and conv+BN fusion only;
    'extended': plus fusions like conv+activation; 'all': plus the NCHWc blocked layout), for studies;
    `optimized_path` writes the optimised graph there, to see what ONNX Runtime made of the model.
    """
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class Backend(nn.Module):
    """(N, C, H, W) float32 tensor -> logits, whatever runs underneath."""

    def __init__(self, name: str, setup_s: float = 0.0):
        super().__init__()
        self.name, self.setup_s = name, setup_s


class TorchBackend(Backend):
    def __init__(self, name: str, model: nn.Module, channels_last: bool, setup_s: float):
        super().__init__(name, setup_s)
        self.model, self.channels_last = model, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class OrtBackend(Backend):
    def __init__(self, name: str, session, setup_s: float, path: Path | None = None):
        super().__init__(name, setup_s)
        self.session, self.path = session, path
        self.input_name = session.get_inputs()[0].name
        # An empty parameter, so that `next(backend.parameters()).device` tells callers to feed CPU tensors.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


def _input_size(model: nn.Module, example: torch.Tensor | None) -> tuple[int, int, int]:
    if example is not None:
        return tuple(example.shape[1:])
    from resnetkit.export.fold import parity_input

    return tuple(parity_input(model, 1).shape[1:])


def make_backend(name: str, model: nn.Module, *, example: torch.Tensor | None = None, threads: int | None = None,
                 calib: torch.Tensor | None = None, workdir: str | os.PathLike | None = None,
                 fold_bn: bool = True) -> Backend:
    """Build the backend `name` for `model` (eval mode, CPU for the ONNX Runtime ones).

    eager:            the model as it is.
    channels_last:    BNs folded, channels-last weights and inputs.
    compile:          channels_last + torch.compile (its first calls compile; time them as warm-up).
    onnxruntime:      BNs folded, exported to ONNX (dynamic batch, H and W for fully convolutional
                      models), run by ONNX Runtime with every graph optimisation.
    onnxruntime-int8: onnxruntime, statically quantised to int8 (QDQ, per channel) on `calib`, an
                      (N, C, H, W) tensor of preprocessed images.
    `example` fixes the input size of the ONNX export (default: the model's preprocessing size).
    """
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    model.eval()
    t0 = time.perf_counter()
    if name == "eager":
        return TorchBackend(name, model, False, 0.0)
    if name in ("channels_last", "compile"):
        prepared = prepare_for_inference(model, fold_bn=fold_bn, channels_last=True, compile=name == "compile",
                                         example=example)
        return TorchBackend(name, prepared, True, time.perf_counter() - t0)
    require_onnxruntime()
    from resnetkit.export.formats import export_model

    if name == "onnxruntime-int8" and calib is None:
        raise UserError("the onnxruntime-int8 backend needs calibration images (e.g. --calib-data fashion_mnist)")
    if next(model.parameters()).device.type != "cpu":  # ONNX Runtime runs on the CPU here
        model = copy.deepcopy(model).cpu()
    example = example.cpu() if example is not None else None
    c, h, w = _input_size(model, example)
    folded = prepare_for_inference(model, fold_bn=fold_bn, channels_last=False, example=example)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="resnetkit-ort-"))
    path = workdir / "model.onnx"
    export_model(folded, path, "onnx", input_size=(h, w), in_chans=c, reference=model)
    if name == "onnxruntime-int8":
        from resnetkit.export.quantize import quantize_onnx

        qpath = workdir / "model.int8.onnx"
        quantize_onnx(path, qpath, calib)
        path = qpath
    session = ort_session(path, threads=threads)
    return OrtBackend(name, session, time.perf_counter() - t0, path)
