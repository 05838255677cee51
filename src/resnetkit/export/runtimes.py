"""The named inference backends: `eager`, `channels_last`, `compile`, `bf16`, `compile-bf16`,
`onnxruntime`, `onnxruntime-int8`, `int8` (resnetkit.export.backends adds `auto`, which picks one).

A backend is an nn.Module wrapping a prepared model (or an ONNX Runtime session), so code written for a
model (`evaluate`, `predict`) takes one unchanged: it maps an (N, C, H, W) float tensor to float32 logits.
`setup_s` records what preparing it cost (folding, compiling, exporting), which benchmarks report apart.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor import config as inductor_config

from resnetkit.errors import ConfigError
from resnetkit.export.fold import parity_input, prepare_for_inference
from resnetkit.export.formats import export_model
from resnetkit.export.ort import ort_session, require_onnxruntime
from resnetkit.export.quantize import quantize_onnx, quantize_pt2e

log = logging.getLogger(__name__)

NAMED = ("eager", "channels_last", "compile", "bf16", "compile-bf16", "onnxruntime", "onnxruntime-int8", "int8")
COMPILED = ("compile", "compile-bf16", "int8")
# bf16 by casting the folded model (weights and activations bf16) rather than autocast (fp32 weights,
# cast to bf16 on every call): the same outputs on ResNet-50 (max relative error 6.3e-3 either way) and
# 1.07x faster eager on a 2-core avx512_bf16 EPYC; `benchmarks/inference.py --bf16-study` compares both.
BF16_MODE = "cast"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo). RESNETKIT_CPU_FLAGS="avx2,fma" overrides them, to see what
    resnetkit does on a CPU without bf16 or VNNI."""
    env = os.environ.get("RESNETKIT_CPU_FLAGS")
    if env is not None:
        return {f.strip() for f in env.split(",") if f.strip()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu() -> bool:
    return "RESNETKIT_CPU_FLAGS" not in os.environ and torch.cuda.is_available()


def unsupported(name: str) -> str | None:
    """Why this machine cannot run backend `name` fast, or None when it can. bf16 without hardware
    support is emulated (several times slower than fp32); int8 without VNNI likewise."""
    flags = cpu_flags()
    if name in ("bf16", "compile-bf16") and not _gpu() and not flags & {"avx512_bf16", "amx_bf16"}:
        return (f"the {name} backend needs bf16 hardware (a CPU with avx512_bf16 or AMX, or a CUDA GPU); "
                "this CPU has neither")
    if name == "int8" and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "the int8 backend needs a CPU with VNNI (avx512_vnni, avx_vnni) or AMX; this CPU has none"
    return None


class Backend(nn.Module):
    """(N, C, H, W) float32 tensor -> float32 logits, whatever runs underneath."""

    def __init__(self, name: str, setup_s: float = 0.0, output_stride: int = 32):
        super().__init__()
        self.name, self.setup_s = name, setup_s
        self.output_stride = output_stride  # segmentation pads inputs to the backbone's aligned size
        self.decision: dict | None = None  # set by `auto`: what it measured and why it chose this backend


class TorchBackend(Backend):
    """A (prepared) PyTorch model, optionally in bf16: `bf16="cast"` (weights and inputs cast to bf16) or
    "autocast" (fp32 weights under bf16 autocast). A compiled model is specialised to the batch size of its
    first call: smaller batches (a folder's last) are zero-padded to it rather than recompiled, which
    would cost as much as the first compilation."""

    def __init__(self, name: str, model: nn.Module, channels_last: bool, setup_s: float, bf16: str | None = None,
                 output_stride: int = 32):
        super().__init__(name, setup_s, output_stride)
        self.model, self.channels_last, self.bf16 = model, channels_last, bf16
        if bf16 == "cast":
            self.model = model.to(torch.bfloat16)
        self.pad_to = 0 if name in COMPILED else None

    @torch.no_grad()  # inductor's freezing (compiled backends) applies to no-grad calls only
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.pad_to is not None:
            self.pad_to = self.pad_to or n
            if 0 < n < self.pad_to:
                x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.pad_to - n))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.bf16 == "cast":
            x = x.to(torch.bfloat16)
        # Freezing is read when inductor compiles (the first call, or a recompilation), not by torch.compile
        # itself (its `options` do not reach the pass that needs it), so every call runs under it.
        frozen = inductor_config.patch(freezing=True) if self.pad_to is not None else contextlib.nullcontext()
        with frozen, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16 == "autocast"):
            out = self.model(x)
        return out[:n].float()


def input_device(run: nn.Module) -> torch.device:
    """The device a backend (or a model) wants its inputs on: that of its first parameter or buffer
    (an ONNX Runtime backend keeps an empty CPU parameter for this), else the CPU."""
    for t in (*run.parameters(), *run.buffers()):
        return t.device
    return torch.device("cpu")


class OrtBackend(Backend):
    def __init__(self, name: str, session, setup_s: float, path: Path | None = None, output_stride: int = 32):
        super().__init__(name, setup_s, output_stride)
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


def build_named(name: str, model: nn.Module, *, example: torch.Tensor | None = None, threads: int | None = None,
                calib: torch.Tensor | None = None, workdir: str | os.PathLike | None = None,
                fold_bn: bool = True) -> Backend:
    """Build the named backend `name` for `model` (see resnetkit.export.backends.make_backend)."""
    if name not in NAMED:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(NAMED)}")
    model.eval()
    if (why := unsupported(name)) is not None:
        raise ConfigError(why)
    t0 = time.perf_counter()
    stride = getattr(model, "output_stride", 32)
    if name == "eager":
        return TorchBackend(name, model, False, 0.0, output_stride=stride)
    if name in ("channels_last", "compile", "bf16", "compile-bf16"):
        # A one-channel image is both contiguous and channels-last, and inductor then guesses the first
        # convolution's output layout wrong (a stride assertion at run time): compile those NCHW.
        cl = not (name.startswith("compile") and getattr(model, "in_chans", 3) == 1)
        prepared = prepare_for_inference(model, fold_bn=fold_bn, channels_last=cl, example=example,
                                         compile=name.startswith("compile"))
        return TorchBackend(name, prepared, cl, time.perf_counter() - t0,
                            bf16=BF16_MODE if name.endswith("bf16") else None, output_stride=stride)
    if name in ("int8", "onnxruntime-int8") and calib is None:
        raise ConfigError(f"the {name} backend needs calibration images: calib=(N, C, H, W) tensor")
    if name == "int8":
        return TorchBackend(name, quantize_pt2e(model, calib), False, time.perf_counter() - t0, output_stride=stride)
    return _ort_backend(name, model, example, threads, calib, workdir, fold_bn, t0, stride)


def _ort_backend(name: str, model: nn.Module, example: torch.Tensor | None, threads: int | None,
                 calib: torch.Tensor | None, workdir: str | os.PathLike | None, fold_bn: bool, t0: float,
                 stride: int) -> OrtBackend:
    require_onnxruntime()
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
    return OrtBackend(name, session, time.perf_counter() - t0, path if keep else None, output_stride=stride)
