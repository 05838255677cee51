"""Inference backends selected by name: `eager`, `channels_last`, `compile`, `bf16`, `compile-bf16`,
`onnxruntime`, `onnxruntime-int8`, `int8` (resnetkit.export.runtimes), and `auto`
(resnetkit.export.auto: the fastest of them that agrees with fp32, measured once per model and machine,
then cached).

A backend is an nn.Module wrapping a prepared model (or an ONNX Runtime session), so code written for a
model (`evaluate`, `predict`) takes one unchanged: it maps an (N, C, H, W) float tensor to float32 logits.
`setup_s` records what preparing it cost (folding, compiling, exporting), which benchmarks report apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from resnetkit._helpers import resolve_device
from resnetkit.errors import ConfigError
from resnetkit.export.auto import auto_backend, default_candidates
from resnetkit.export.ort import require_onnxruntime
from resnetkit.export.runtimes import (
    NAMED,
    Backend,
    OrtBackend,
    TorchBackend,
    build_named,
    cpu_flags,
    input_device,
    unsupported,
)

__all__ = ["BACKENDS", "GPU_BACKENDS", "Backend", "OrtBackend", "TorchBackend", "backend_device", "cpu_flags",
           "input_device", "make_backend", "require_onnxruntime", "unsupported"]

# `auto` first: it is the default of predict, eval, segment and bench.
BACKENDS = ("auto", "auto-fp32", *NAMED)
# The backends that run where the model is (auto measures its candidates there, its cache keyed by the GPU);
# the others (ONNX Runtime, x86 int8 and the CPU bf16 paths) run on the CPU unless a device is asked for.
GPU_BACKENDS = ("auto", "auto-fp32", "eager", "channels_last", "compile")


def backend_device(backend: str, device: str | torch.device | None = None) -> torch.device:
    """Where a job on `backend` runs: `device` when given (checked: resnetkit._helpers.resolve_device),
    else the first GPU when there is one and the backend can use it, else the CPU."""
    if device is not None:
        return resolve_device(device)
    return resolve_device(None) if backend in GPU_BACKENDS else torch.device("cpu")


def make_backend(name: str, model: nn.Module, *, example: torch.Tensor | None = None, threads: int | None = None,
                 calib: torch.Tensor | Callable | None = None, workdir: str | os.PathLike | None = None,
                 fold_bn: bool = True, n_images: int | None = None, batch_size: int | None = None) -> Backend:
    """Build the backend `name` for `model` (eval mode, CPU for the ONNX Runtime ones).

    auto:             resnetkit.export.auto.auto_backend: the fastest backend below that agrees with fp32
                      eager on `calib` (or the model's own training data), chosen once per model and
                      machine and cached; `n_images` (how many the job will run) lets it skip compiling
                      for small jobs, `batch_size` is the job's batch.
    auto-fp32:        auto among the fp32 candidates only (channels_last, compile, onnxruntime).
    eager:            the model as it is.
    channels_last:    BNs folded, channels-last weights and inputs.
    compile:          channels_last + torch.compile (inductor, with freezing: weights become constants,
                      pre-packed for oneDNN); its first call compiles.
    bf16:             channels_last under bf16 autocast (needs avx512_bf16 / AMX, or a GPU).
    compile-bf16:     bf16, compiled with freezing: the fastest CPU path where bf16 runs natively.
    onnxruntime:      BNs folded, exported to ONNX (dynamic batch, H and W for fully convolutional
                      models), run by ONNX Runtime with every graph optimisation.
    onnxruntime-int8: onnxruntime, statically quantised to int8 (QDQ, per channel) on `calib`, an
                      (N, C, H, W) tensor of preprocessed images.
    int8:             PyTorch's own x86 int8: PT2E with the X86 inductor quantiser (torchao), calibrated
                      on `calib`, compiled with freezing (needs VNNI or AMX).
    `example` fixes the input size of the ONNX export (default: the model's preprocessing size).
    `workdir` keeps the .onnx files there; by default they are written to a temporary folder that is
    removed once ONNX Runtime has loaded them. A backend this machine cannot run raises a ConfigError.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ("auto", "auto-fp32"):
        return auto_backend(model, calib=calib if calib is not None else example, n_images=n_images,
                            batch_size=batch_size, threads=threads,
                            candidates=default_candidates(fp32=True) if name == "auto-fp32" else None)
    return build_named(name, model, example=example, threads=threads, calib=calib, workdir=workdir, fold_bn=fold_bn)
