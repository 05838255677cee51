"""ONNX Runtime, an optional dependency (the [onnx] extra): importing it with an install hint, sessions
tuned for CPU throughput, and quieting the exporter's and quantiser's chatter."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from resnetkit.errors import DependencyError

ONNX_HINT = "pip install 'resnetkit[onnx]'"


def require_onnxruntime():
    """Import onnxruntime (loaded lazily on purpose: it is optional) or say how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"the onnxruntime backend needs ONNX Runtime: {ONNX_HINT}") from None
    return onnxruntime




def ort_session(path: str | os.PathLike, threads: int | None = None, optimized_path: str | None = None,
                level: str = "all", spinning: bool = True):
    """An ONNX Runtime CPU session tuned for throughput: all graph optimisations (conv+BN+ReLU fusion,
    NCHWc layouts), sequential execution, `threads` intra-op threads, no inter-op pool.

    `level` lowers the graph optimisation level ('basic': constant folding and conv+BN fusion only;
    'extended': plus fusions like conv+activation; 'all': plus the NCHWc blocked layout), for studies;
    `optimized_path` writes the optimised graph there, to see what ONNX Runtime made of the model.
    `spinning=False` stops its idle threads from busy-waiting for work, which otherwise takes cores from
    whatever runs between its calls (other backends, in a benchmark that alternates them).
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
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
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
