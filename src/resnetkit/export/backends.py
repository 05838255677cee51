"""Inference backends selected by name: `eager`, `channels_last`, `compile`, `onnxruntime`, `onnxruntime-int8`.

A backend is an nn.Module wrapping a prepared model (or an ONNX Runtime session), so code written for a
model (`evaluate`, `predict`) takes one unchanged: it maps an (N, C, H, W) float tensor to logits.
`setup_s` records what preparing it cost (folding, compiling, exporting), which benchmarks report apart.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.export.fold import parity_input, prepare_for_inference
from resnetkit.export.formats import export_model
from resnetkit.export.ort import ort_session, require_onnxruntime
from resnetkit.export.quantize import quantize_onnx

log = logging.getLogger(__name__)

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8")
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
    `workdir` keeps the .onnx files there; by default they are written to a temporary folder that is
    removed once ONNX Runtime has loaded them.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    model.eval()
    t0 = time.perf_counter()
    if name == "eager":
        return TorchBackend(name, model, False, 0.0)
    if name in ("channels_last", "compile"):
        prepared = prepare_for_inference(model, fold_bn=fold_bn, channels_last=True, compile=name == "compile",
                                         example=example)
        return TorchBackend(name, prepared, True, time.perf_counter() - t0)
    require_onnxruntime()
    if name == "onnxruntime-int8" and calib is None:
        raise ConfigError("the onnxruntime-int8 backend needs calibration images: calib=(N, C, H, W) tensor")
    if next(model.parameters()).device.type != "cpu":  # ONNX Runtime runs on the CPU here
        model = copy.deepcopy(model).cpu()
    example = example.cpu() if example is not None else None
    c, h, w = _input_size(model, example)
    folded = prepare_for_inference(model, fold_bn=fold_bn, channels_last=False, example=example)
    # Without a `workdir` the files live in a temporary folder only until the session has read them.
    keep = workdir is not None
    workdir = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="resnetkit-ort-"))
    try:
        path = workdir / "model.onnx"
        export_model(folded, path, "onnx", input_size=(h, w), in_chans=c, reference=model)
        if name == "onnxruntime-int8":
            qpath = workdir / "model.int8.onnx"
            quantize_onnx(path, qpath, calib)
            path = qpath
        session = ort_session(path, threads=threads)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return OrtBackend(name, session, time.perf_counter() - t0, path if keep else None)
