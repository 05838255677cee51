"""Shared by the benchmark scripts: the machine and versions, and interleaved timing."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnetkit._helpers import machine_info
from resnetkit._helpers import machine_line as _machine_line


def machine_line(threads: int | None = None) -> str:
    """The hardware and versions a table was measured on (resnetkit's one machine description)."""
    return _machine_line(machine_info(threads))


def forward_parser(description: str) -> argparse.ArgumentParser:
    """The options every forward-pass comparison takes: batch, input size, threads, trials."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=10)
    return ap


def forward_setup(args: argparse.Namespace) -> None:
    """Threads and seed fixed before any model is built, so both contenders start alike."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)


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
