"""Segmentation on the synthetic shapes set, on this machine: val mIoU against wall time.

    nice -n 10 .venv/bin/python benchmarks/segmentation_shapes.py [--budget-min 15] [--out runs/bench_seg]

Generates the set (`resnetkit data make-shapes`, timed apart), trains from scratch with the time
budget fitted into --budget-min (warm-up, the per-epoch evaluations and the final save included), and
prints one row per epoch plus the first time val mIoU reached the target. Target: >= 0.80 mIoU on the
val split within 15 minutes on CPU. On a shared machine the time axis depends on the other load; the
table states the threads used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from resnetkit.data.shapes import SHAPE_CLASSES, make_shapes  # noqa: E402
from resnetkit.train import resolve, train  # noqa: E402

TARGET = 0.80


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_seg")
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--head", default="aspp")
    p.add_argument("--output-stride", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared 2-core machine two threads ran 5-10x slower)")
    p.add_argument("--set", action="append", default=[], help="more SECTION.KEY=VALUE overrides")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; choose another --out")

    t0 = time.perf_counter()
    data = make_shapes(out / "data", a.n_train, a.n_val, a.size, a.seed)
    gen_s = time.perf_counter() - t0
    crop = a.size + 1  # 32k+1-style crop: the last feature sits on the last pixel
    # ASPP rates scaled to the feature map: 64 px at output stride 4 gives 16x16 features, where
    # DeepLab's 6/12/18 (for 33x33 at stride 16, times 4 here) would reach past the border.
    overrides = [f"data.crop_size={crop}", "data.min_scale=0.75", "data.max_scale=1.25",
                 "model.kwargs={\"aspp_channels\": 64, \"aspp_rates\": [2, 4, 6]}" if a.head == "aspp" else
                 "model.kwargs={}", "optim.weight_decay=5e-4", "schedule.warmup_steps=50", *a.set]
    cfg = resolve(None, overrides, {"data.path": str(data), "model.backbone": a.backbone, "model.head": a.head,
                                    "model.output_stride": a.output_stride, "data.batch_size": a.batch_size,
                                    "optim.lr": a.lr, "schedule.budget_min": a.budget_min,
                                    "run.out": str(out / "run"), "run.seed": a.seed,
                                    "run.threads": a.threads}, task="segmentation")
    result = train(cfg)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]

    print()
    print(f"# segmentation on synthetic shapes ({a.size}x{a.size}, {a.n_train} train / {a.n_val} val, "
          f"{len(SHAPE_CLASSES)} classes)")
    print(machine_line(a.threads))
    print(f"model: {a.backbone} + {a.head} head, output stride {a.output_stride}, batch {a.batch_size}, "
          f"lr {a.lr} cosine, crop {crop}, scale 0.75-1.25, flip; budget {a.budget_min} min; data generation "
          f"{gen_s:.1f} s (not in the budget); one trial, seed {a.seed}")
    print()
    print("| epoch | step | minutes | train loss | val mIoU | val pixel acc | img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['step']} | {r['time_s'] / 60:.2f} | {r['train_loss']:.4f} | {r['val_miou']:.4f} "
              f"| {r['val_pixel_acc']:.4f} | {r['img_s']:.1f} |")
    hit = next((r for r in rows if r["val_miou"] >= TARGET), None)
    print()
    print(f"final val mIoU {result['val_miou']:.4f} after {result['time_s'] / 60:.1f} min; per-class IoU: "
          + ", ".join(f"{n} {v:.3f}" for n, v in zip(SHAPE_CLASSES, result["val_iou"])))
    print(f"target {TARGET:.2f}: " + (f"reached at {hit['time_s'] / 60:.2f} min (epoch {hit['epoch']})" if hit
                                      else "NOT reached"))
    return 0 if hit else 1


if __name__ == "__main__":
    sys.exit(main())
