"""What test-time augmentation adds, side by side in one run: plain, flip and (segmentation) multiscale
evaluation of the same weights on the same split.

    .venv/bin/python benchmarks/tta.py --cls runs/demo/model.safetensors --cls-data fashion-mnist \
        --seg runs/bench_seg/run/model.safetensors --seg-data runs/bench_seg/data

`make demo` writes the Fashion-MNIST weights; `benchmarks/segmentation_shapes.py` the shapes weights and
data. Either pair may be left out. Prints one row per (weights, mode): the metric, its change from
plain, and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from resnetkit.train import evaluate_file  # noqa: E402


def rows_for(weights: str, data: str, modes: list[str | None], metric: str) -> list[tuple]:
    out, base = [], None
    for mode in modes:
        t0 = time.perf_counter()
        r = evaluate_file(weights, data, tta=mode)
        value = r[metric]
        base = value if base is None else base
        out.append((Path(weights).parent.name, data, mode or "none", metric, value, value - base,
                    time.perf_counter() - t0, r["n"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cls", help="classification weights")
    p.add_argument("--cls-data", default="fashion-mnist")
    p.add_argument("--seg", help="segmentation weights")
    p.add_argument("--seg-data", help="the segmentation data folder (its val split is used)")
    a = p.parse_args(argv)
    rows = []
    if a.cls:
        rows += rows_for(a.cls, a.cls_data, [None, "flip"], "top1")
    if a.seg:
        rows += rows_for(a.seg, a.seg_data, [None, "flip", "multiscale"], "miou")
    print(machine_line())
    print(f"{'run':<12} {'data':<28} {'tta':<11} {'metric':<6} {'value':>7} {'change':>8} {'eval s':>7} {'n':>6}")
    for run, data, mode, metric, value, delta, secs, n in rows:
        print(f"{run:<12} {data[-28:]:<28} {mode:<11} {metric:<6} {value:7.4f} {delta:+8.4f} {secs:7.1f} {n:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
