"""Export a model to ONNX, TorchScript or a torch.export ExportedProgram, then check the artifact.

Every export has a dynamic batch; fully convolutional models (global_pool=False) also get a dynamic
height and width. The check runs the written artifact (ONNX Runtime for ONNX) on fresh random inputs
of another batch size (and another size where H/W are dynamic) and compares it with eager PyTorch.
Files are written to a temporary name beside the target and renamed, so a failed export leaves none.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from resnetkit._helpers import atomic_write, check_output
from resnetkit.errors import ConfigError, DependencyError
from resnetkit.export.fold import prepare_for_inference, relative_error
from resnetkit.export.ort import ort_session, quiet, require_onnxruntime
from resnetkit.layers import MaxPool2dSame, SymbolicMaxPool2dSame
from resnetkit.weights import input_shape, load

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
DEFAULT_OPSET = 18
OPSETS = range(18, 24)  # torch's dynamo exporter starts at 18; onnxscript 0.7 knows up to 23
# Exported artifacts may reorder fp32 sums (ORT's fused kernels): 1e-4 of the output range is plenty.
EXPORT_RTOL = 1e-4
DTYPES = ("fp32", "bf16")
# bf16 keeps 8 bits of mantissa: ResNet-50 logits move by ~0.6% of their range; 5% catches a broken export.
BF16_RTOL = 5e-2
# ONNX Runtime's CPU provider has no bf16 Conv kernel (it refuses such a graph as invalid), so a bf16 ONNX
# file could not be checked or run here.
ONNX_BF16 = ("dtype bf16 is not available for ONNX: ONNX Runtime's CPU provider has no bf16 convolution, so "
             "the file could not be validated or run here; export fp32 ONNX, or format exported-program with bf16")


class Bf16(nn.Module):
    """Computes in bf16 and keeps the fp32 interface: fp32 images in, fp32 logits out, so a bf16
    artifact is a drop-in replacement for the fp32 one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(torch.bfloat16)
        for name in ("config", "card", "global_pool"):  # what the exporter and its checks look at
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16)).float()


def exportable(model: nn.Module, dynamic_size: bool = True) -> nn.Module:
    """A copy of `model` (eval mode) whose size-dependent layers are replaced by symbolic ones when the
    export has a dynamic H and W (at a fixed size the original pool exports as one MaxPool node)."""
    model = copy.deepcopy(model).eval()
    if not dynamic_size:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, MaxPool2dSame) and module.kernel_size >= module.stride:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], SymbolicMaxPool2dSame(module.kernel_size, module.stride))
    return model


def is_fully_convolutional(model: nn.Module) -> bool:
    return getattr(model, "global_pool", True) is False


def default_output(weights: str | os.PathLike, fmt: str) -> Path:
    """model.safetensors -> model.onnx / model.torchscript.pt / model.pt2 beside it."""
    p = Path(weights)
    return p.with_name(p.name.removesuffix(".safetensors") + FORMATS[fmt])


def _dynamic_shapes(dynamic_size: bool) -> tuple[dict]:
    d = torch.export.Dim.DYNAMIC
    return ({0: d, 2: d, 3: d} if dynamic_size else {0: d},)  # for forward's one positional input


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_size: bool) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise DependencyError("ONNX export needs onnx and onnxscript: pip install 'resnetkit[onnx]'") from None
    with warnings.catch_warnings(), quiet("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    dynamic_shapes=_dynamic_shapes(dynamic_size), input_names=["input"],
                                    output_names=["logits"], optimize=True, verbose=False)
    program.save(str(path), external_data=False)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; tracing still works
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _export_program(model: nn.Module, example: torch.Tensor, path: Path, dynamic_size: bool) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_size))
    torch.export.save(program, str(path))


def load_runner(path: str | os.PathLike, fmt: str, threads: int | None = None):
    """A function (N, C, H, W) float tensor -> output tensor that runs the artifact at `path`."""
    path = str(path)
    if fmt == "onnx":
        session = ort_session(path, threads=threads)
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(path)
        return lambda x: module(x)
    if fmt == "exported-program":
        module = torch.export.load(path).module()
        return lambda x: module(x)
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


@torch.no_grad()
def validate(path: str | os.PathLike, fmt: str, model: nn.Module, inputs: list[torch.Tensor],
             rtol: float = EXPORT_RTOL) -> list[dict]:
    """Run the artifact on each input and compare with eager `model`. Raises ValueError past `rtol`."""
    run = load_runner(path, fmt)
    results = []
    for x in inputs:
        ref, out = model(x), run(x)
        if out.shape != ref.shape:
            raise ValueError(f"{fmt} artifact gives shape {tuple(out.shape)} for input {tuple(x.shape)}, "
                             f"eager gives {tuple(ref.shape)}")
        diff, rel = relative_error(out, ref)
        results.append(dict(input=tuple(x.shape), max_abs_diff=diff, rel=rel))
        if rel > rtol:
            raise ValueError(f"{fmt} artifact differs from eager on input {tuple(x.shape)}: max abs diff "
                             f"{diff:.3g}, relative {rel:.3g} > {rtol}")
    return results


def check_inputs(example: torch.Tensor, dynamic_size: bool, seed: int = 1) -> list[torch.Tensor]:
    """Fresh inputs unlike the export example: another batch size, and other (odd/even) sizes if dynamic."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = example.shape
    shapes = [(n + 1, c, h, w)]
    if dynamic_size:
        shapes += [(1, c, h + 1, w + 3), (2, c, h + 8, w + 2)]
    return [torch.randn(s, generator=g) for s in shapes]


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str, *, input_size: tuple[int, int],
                 in_chans: int = 3, opset: int = DEFAULT_OPSET, dynamic_size: bool | None = None,
                 check: bool = True, reference: nn.Module | None = None, dtype: str = "fp32") -> dict:
    """Export `model` (eval mode, on CPU) to `path` in `fmt`, atomically, and validate the artifact
    against `reference` (default: `model` itself; pass the unfolded model when exporting a folded one).

    Returns {"path", "format", "dynamic_size", "checks": [{"input", "max_abs_diff", "rel"}, ...]}.
    `dynamic_size` defaults to True for fully convolutional models. `dtype` "bf16" computes in bf16
    behind an fp32 interface (Bf16), checked against the fp32 reference within BF16_RTOL; not for ONNX.
    """
    _check_dtype(fmt, dtype)
    if dynamic_size is None:
        dynamic_size = is_fully_convolutional(model)
    model = model.eval().cpu()
    export_net = exportable(model, dynamic_size)
    if dtype == "bf16":
        export_net = Bf16(export_net)
    # Batch 2: torch.export specialises dimensions of size 1, so the example must not have any.
    example = torch.randn(2, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    # torch.export.save insists on a .pt2 name, so the temporary file keeps the format's suffix.
    with atomic_write(path, FORMATS[fmt]) as tmp:
        if fmt == "onnx":
            _export_onnx(export_net, example, tmp, opset, dynamic_size)
        elif fmt == "torchscript":
            _export_torchscript(export_net, example, tmp)
        else:
            _export_program(export_net, example, tmp, dynamic_size)
        ref = (reference if reference is not None else model).eval().cpu()
        rtol = BF16_RTOL if dtype == "bf16" else EXPORT_RTOL
        checks = validate(tmp, fmt, ref, check_inputs(example, dynamic_size), rtol=rtol) if check else []
    for c in checks:
        log.debug("%s check: input %s max abs diff %.3g (relative %.3g)", fmt, "x".join(map(str, c["input"])),
                 c["max_abs_diff"], c["rel"])
    return dict(path=path, format=fmt, dynamic_size=dynamic_size, checks=checks, dtype=dtype)


def _check_dtype(fmt: str, dtype: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "bf16" and fmt == "onnx":
        raise ConfigError(ONNX_BF16)


def export_file(weights: str | os.PathLike | nn.Module, out: str | os.PathLike | None = None, fmt: str = "onnx", *,
                input_size: tuple[int, int] | None = None, fold_bn: bool = True, dynamic_size: bool | None = None,
                opset: int = DEFAULT_OPSET, overwrite: bool = False, allow_nonfinite: bool = False,
                dtype: str = "fp32") -> dict:
    """What `resnetkit export` does: load a weights file (or take a model with a card), fold its batch
    norms, export it to `out` (default: beside the weights, model.onnx / .torchscript.pt / .pt2) and
    validate the artifact against the unfolded model. An existing `out` is replaced only with
    `overwrite`. `dtype` "bf16" computes in bf16 (exported-program, torchscript). Returns
    export_model's result dict."""
    _check_dtype(fmt, dtype)
    if opset not in OPSETS:
        raise ConfigError(f"opset {opset}: choose {OPSETS.start} to {OPSETS.stop - 1}")
    if out is None and not isinstance(weights, str | os.PathLike):
        raise ConfigError("out is required when exporting a model object (there is no weights file to put it beside)")
    if fmt == "onnx":
        require_onnxruntime()  # fail before the (slow) export, with the install hint
    out = check_output(out if out is not None else default_output(weights, fmt),
                       inputs=[weights] if isinstance(weights, str | os.PathLike) else [], overwrite=overwrite)
    model = load(weights, allow_nonfinite=allow_nonfinite) if isinstance(weights, str | os.PathLike) else weights.eval()
    in_chans, h, w = input_shape(model, input_size)
    net = prepare_for_inference(model, channels_last=False) if fold_bn else model
    return export_model(net, out, fmt,
                        input_size=(h, w), in_chans=in_chans, opset=opset, dynamic_size=dynamic_size,
                        reference=model, dtype=dtype)
