"""Export a model to ONNX, TorchScript or a torch.export ExportedProgram, then check the artifact.

Every export has a dynamic batch; fully convolutional models (global_pool=False) also get a dynamic
height and width. The check runs the written artifact (ONNX Runtime for ONNX) on fresh random inputs
of another batch size (and another size where H/W are dynamic) and compares it with eager PyTorch.
Files are written to a temporary name beside the target and renamed, so a failed export leaves none.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import UserError
from resnetkit.export.fold import relative_error
from resnetkit.layers.padding import MaxPool2dSame

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
DEFAULT_OPSET = 18
# Exported artifacts may reorder fp32 sums (ORT's fused kernels): 1e-4 of the output range is plenty.
EXPORT_RTOL = 1e-4


class SymbolicMaxPool2dSame(nn.Module):
    """TF 'SAME' max pooling written with symbolic sizes, so that an export keeps H and W dynamic.

    `max_pool2d_same` picks its padding from Python ints (`int(h)`), which torch.export and tracing
    freeze to the example's size. Here the input is padded with -inf by k-1 on every side and then
    sliced to where TF's padding would start: the same windows, for any size.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _window(self, n):
        k, s = self.kernel_size, self.stride
        out = (n + s - 1) // s  # ceil(n / s)
        total = (out - 1) * s + k - n  # TF's pad_total: never negative when k >= s (no max needed)
        return (k - 1) - total // 2, (out - 1) * s + k  # start in the padded input, length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        h, w = x.shape[-2], x.shape[-1]
        sh, lh = self._window(h)
        sw, lw = self._window(w)
        x = F.pad(x, (k - 1, k - 1, k - 1, k - 1), value=float("-inf"))
        return F.max_pool2d(x[:, :, sh:sh + lh, sw:sw + lw], k, self.stride)


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


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (ending in `suffix`, default path's own); rename it onto `path`
    when the block succeeds, delete it when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix or path.suffix}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence the exporter's INFO chatter ('Removed 193 unused nodes') while it runs."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_shapes(dynamic_size: bool) -> tuple[dict]:
    d = torch.export.Dim.DYNAMIC
    return ({0: d, 2: d, 3: d} if dynamic_size else {0: d},)  # for forward's one positional input


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_size: bool) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxscript: pip install 'resnetkit[onnx]'") from None
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx"):
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
        from resnetkit.export.backends import ort_session

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
    raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


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
                 check: bool = True, reference: nn.Module | None = None) -> dict:
    """Export `model` (eval mode, on CPU) to `path` in `fmt`, atomically, and validate the artifact
    against `reference` (default: `model` itself; pass the unfolded model when exporting a folded one).

    Returns {"path", "format", "dynamic_size", "checks": [{"input", "max_abs_diff", "rel"}, ...]}.
    `dynamic_size` defaults to True for fully convolutional models.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dynamic_size is None:
        dynamic_size = is_fully_convolutional(model)
    model = model.eval().cpu()
    export_net = exportable(model, dynamic_size)
    # Batch 2: torch.export specialises dimensions of size 1, so the example must not have any.
    example = torch.randn(2, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    # torch.export.save insists on a .pt2 name, so the temporary file keeps the format's suffix.
    with atomic_path(path, FORMATS[fmt]) as tmp:
        if fmt == "onnx":
            _export_onnx(export_net, example, tmp, opset, dynamic_size)
        elif fmt == "torchscript":
            _export_torchscript(export_net, example, tmp)
        else:
            _export_program(export_net, example, tmp, dynamic_size)
        ref = (reference if reference is not None else model).eval().cpu()
        checks = validate(tmp, fmt, ref, check_inputs(example, dynamic_size)) if check else []
    for c in checks:
        log.info("%s check: input %s max abs diff %.3g (relative %.3g)", fmt, "x".join(map(str, c["input"])),
                 c["max_abs_diff"], c["rel"])
    return dict(path=path, format=fmt, dynamic_size=dynamic_size, checks=checks)
