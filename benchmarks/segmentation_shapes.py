"""Segmentation on the synthetic shapes set, on this machine: val mIoU against wall time, one head or several.

    nice -n 10 .venv/bin/python benchmarks/segmentation_shapes.py [--budget-min 15] [--out runs/bench_seg]
    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/segmentation_shapes.py --heads aspp,deeplabv3plus \
        --budget-min 4 --out runs/bench_seg_heads

Generates the set (`resnetkit data make-shapes`, timed apart), then trains each head of --heads in turn from
scratch with the same settings and the time budget fitted into --budget-min (warm-up, the per-epoch
evaluations and the final save included), and prints one row per epoch plus the first time val mIoU
reached the target, then one row per head (parameters, final and best val mIoU, steps, img/s). Target:
>= 0.80 mIoU on the val split within 15 minutes on CPU. On a shared machine the time axis depends on the
other load; the table states the threads used, and heads run one after the other, not interleaved.
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
from resnetkit.models import create_model, segmentation_name  # noqa: E402
from resnetkit.train import resolve, train  # noqa: E402

TARGET = 0.80
# ASPP rates scaled to the feature map: 64 px at output stride 4 gives 16x16 features, where DeepLab's
# 6/12/18 (for 33x33 at stride 16, times 4 here) would reach past the border. Both ASPP heads get them.
HEAD_KWARGS = {"aspp": {"aspp_channels": 64, "aspp_rates": [2, 4, 6]},
               "deeplabv3plus": {"aspp_channels": 64, "aspp_rates": [2, 4, 6]}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_seg")
    p.add_argument("--budget-min", type=float, default=15.0, help="per head")
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--heads", "--head", default="aspp", help="comma-separated: slim, aspp, deeplabv3plus")
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
    a.heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    bad = [h for h in a.heads if h not in ("slim", *HEAD_KWARGS)]
    if bad or not a.heads:
        p.error(f"--heads {','.join(a.heads)}: choose from slim, aspp, deeplabv3plus")
    return a


def run_head(a: argparse.Namespace, head: str, data: Path, out: Path) -> dict:
    """Train `head` on `data` into `out`; the result plus the metrics rows and the parameter count."""
    kwargs = HEAD_KWARGS.get(head, {})
    crop = a.size + 1  # 32k+1-style crop: the last feature sits on the last pixel
    overrides = [f"data.crop_size={crop}", "data.min_scale=0.75", "data.max_scale=1.25",
                 f"model.kwargs={json.dumps(kwargs)}", "optim.weight_decay=5e-4", "schedule.warmup_steps=50", *a.set]
    cfg = resolve(None, overrides, {"data.path": str(data), "model.backbone": a.backbone, "model.head": head,
                                    "model.output_stride": a.output_stride, "data.batch_size": a.batch_size,
                                    "optim.lr": a.lr, "schedule.budget_min": a.budget_min,
                                    "run.out": str(out), "run.seed": a.seed, "run.threads": a.threads},
                  task="segmentation")
    result = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    model = create_model(segmentation_name(head, a.backbone), num_classes=len(SHAPE_CLASSES),
                         output_stride=a.output_stride, **kwargs)
    return {**result, "rows": rows, "params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; choose another --out")

    t0 = time.perf_counter()
    data = make_shapes(out / "data", a.n_train, a.n_val, a.size, a.seed)
    gen_s = time.perf_counter() - t0
    single = len(a.heads) == 1
    results = {h: run_head(a, h, data, out / ("run" if single else f"run_{h}")) for h in a.heads}

    print()
    print(f"# segmentation on synthetic shapes ({a.size}x{a.size}, {a.n_train} train / {a.n_val} val, "
          f"{len(SHAPE_CLASSES)} classes)")
    print(machine_line(a.threads))
    print(f"model: {a.backbone} + {', '.join(a.heads)} head, output stride {a.output_stride}, batch {a.batch_size}, "
          f"lr {a.lr} cosine, crop {a.size + 1}, scale 0.75-1.25, flip; budget {a.budget_min} min per head; data "
          f"generation {gen_s:.1f} s (not in the budget); one trial per head, seed {a.seed}, heads run in turn")
    print()
    print("| head | epoch | step | minutes | train loss | val mIoU | val pixel acc | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for h, res in results.items():
        for r in res["rows"]:
            print(f"| {h} | {r['epoch']} | {r['step']} | {r['time_s'] / 60:.2f} | {r['train_loss']:.4f} "
                  f"| {r['val_miou']:.4f} | {r['val_pixel_acc']:.4f} | {r['img_s']:.1f} |")
    print()
    print("| head | params | final val mIoU | best val mIoU | steps | img/s (mean over epochs) | target reached |")
    print("|---|---:|---:|---:|---:|---:|---|")
    reached = {}
    for h, res in results.items():
        rows = res["rows"]
        hit = next((r for r in rows if r["val_miou"] >= TARGET), None)
        reached[h] = hit is not None
        img_s = sum(r["img_s"] for r in rows) / max(1, len(rows))
        print(f"| {h} | {res['params']:,} | {res['val_miou']:.4f} | {max(r['val_miou'] for r in rows):.4f} "
              f"| {res['step']} | {img_s:.1f} | "
              + (f"{hit['time_s'] / 60:.2f} min (epoch {hit['epoch']})" if hit else "no") + " |")
    print()
    for h, res in results.items():
        print(f"{h}: per-class IoU " + ", ".join(f"{n} {v:.3f}" for n, v in zip(SHAPE_CLASSES, res["val_iou"])))
    return 0 if all(reached.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
