"""Timing of inference callables: warm-up apart, many timed calls, median / p90 / mean and spread.

Only steady-state calls are timed. What precedes them is reported in its own columns: `setup_s`
(folding, exporting, quantising) and `first_s` (the first call, which is where torch.compile
compiles and ONNX Runtime allocates its buffers), as airbench does for compile time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from resnetkit.export.backends import make_backend


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[i]


@torch.no_grad()
def time_fn(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, iters: int = 20, warmup: int = 3,
            min_time_s: float = 0.0) -> dict:
    """Time `fn(x)`: one first call, `warmup` untimed calls, then at least `iters` timed calls (more while
    under `min_time_s`). Returns seconds: first_s, median_s, p90_s, mean_s, std_s, n (timed calls) and
    times (each timed call)."""
    t0 = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return dict(first_s=first, **summarize(times), times=times)


def summarize(times: list[float]) -> dict:
    """median_s, p90_s, mean_s, std_s and n of a list of call times in seconds."""
    return dict(median_s=statistics.median(times), p90_s=_percentile(times, 0.9), mean_s=statistics.fmean(times),
                std_s=statistics.pstdev(times), n=len(times))


def bench_backends(model: nn.Module, backends: list[str], *, batch: int, input_size: tuple[int, int],
                   in_chans: int = 3, threads: int | None = None, iters: int = 20, warmup: int = 3,
                   reference: dict[str, nn.Module] | None = None, calib: torch.Tensor | None = None,
                   on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure `model` under each backend (and each `reference` module, eager) on a random batch.

    Returns one row per backend: name, setup_s, first_s, img_s (batch / median), median_ms, p90_ms,
    mean_ms, std_ms, n. `calib` feeds the int8 backends (random images when None: speed only); the
    auto row is named "auto (CHOICE)" and its setup_s includes measuring the candidates.
    """
    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(batch, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
    if calib is None and {"onnxruntime-int8", "int8"} & set(backends):
        calib = torch.randn(64, in_chans, *input_size, generator=torch.Generator().manual_seed(1))
    runs: list[tuple[str, Callable[[], nn.Module]]] = [
        (f"{name} (eager)", lambda m=m: m.eval()) for name, m in (reference or {}).items()]
    # `auto` checks its candidates against fp32 on the benchmark batch itself (or the card's training data).
    runs += [(name, lambda name=name: make_backend(name, model, example=x[:2], threads=threads,
                                                   calib=x if name.startswith("auto") else calib,
                                                   batch_size=batch))
             for name in backends]
    rows = []
    for name, build in runs:
        t0 = time.perf_counter()
        fn = build()
        setup = getattr(fn, "setup_s", time.perf_counter() - t0)
        if name.startswith("auto"):  # what it chose, and what choosing cost (measuring every candidate, once)
            name, setup = f"{name} ({fn.decision['backend']})", time.perf_counter() - t0
        r = time_fn(fn, x, iters=iters, warmup=warmup)
        row = dict(backend=name, setup_s=setup, first_s=r["first_s"], img_s=batch / r["median_s"],
                   median_ms=1e3 * r["median_s"], p90_ms=1e3 * r["p90_s"], mean_ms=1e3 * r["mean_s"],
                   std_ms=1e3 * r["std_s"], n=r["n"])
        rows.append(row)
        if on_row:
            on_row(row)
        del fn
    return rows


def format_table(rows: list[dict], baseline: str | None = None) -> str:
    """A fixed-width table of bench rows; `baseline` adds a speed-up column relative to that backend."""
    base = next((r["img_s"] for r in rows if r["backend"] == baseline), None)
    width = max([len("backend")] + [len(r["backend"]) for r in rows])
    head = (f"{'backend':<{width}}  {'img/s':>8}  {'median ms':>9}  {'p90 ms':>8}  {'mean±std ms':>15}  "
            f"{'n':>4}  {'setup s':>7}  {'1st call s':>10}" + ("  speed-up" if base else ""))
    lines = [head]
    for r in rows:
        line = (f"{r['backend']:<{width}}  {r['img_s']:8.2f}  {r['median_ms']:9.2f}  {r['p90_ms']:8.2f}  "
                f"{r['mean_ms']:8.2f}±{r['std_ms']:<6.2f}  {r['n']:4d}  {r['setup_s']:7.2f}  {r['first_s']:10.2f}")
        if base:
            line += f"  {r['img_s'] / base:7.2f}x"
        lines.append(line)
    return "\n".join(lines)
