"""Shared by the benchmark scripts: the machine and versions, and interleaved timing."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(threads: int | None = None) -> str:
    import torchvision

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    return (f"machine: {dev}, {os.cpu_count()} logical cores, threads={threads or torch.get_num_threads()} | "
            f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")


def interleaved(fns: dict, trials: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each callable `trials` times, alternating between them so that drift in the machine's load
    hits every contender alike; warm-up calls are run first and not counted."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(ts: list[float]) -> tuple[float, float, float]:
    """(median, mean, stdev) in seconds."""
    return statistics.median(ts), statistics.fmean(ts), statistics.stdev(ts) if len(ts) > 1 else 0.0
