"""Segmentation with the defaults only, as the README flow runs it: val mIoU against wall time.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/segmentation_defaults.py shapes --budget-min 15
    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/segmentation_defaults.py shapes --budget-min 4 \\
        --variants default,loss=weighted,loss=ohem          # the loss choice, side by side
    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/segmentation_defaults.py scenes --budget-min 4

shapes: `resnetkit data make-shapes DIR` (its defaults), then `resnetkit train --task segmentation --data DIR
--budget-min M --out RUN` and nothing else (the settings are chosen from the data: resnetkit.train.
seg_defaults); one row per epoch. Target: >= 0.80 val mIoU within 15 minutes on a 2-core CPU.
`--variants` runs more cells one after another with one flag changed (`loss=ohem` -> `--loss ohem`).

scenes: `resnetkit data make-scenes DIR` (Fashion-MNIST items on photographic backgrounds), the slim, ASPP and
DeepLabv3+ heads, each from scratch and from a resnet20 pretrained on Fashion-MNIST classification with
`resnetkit train` (Fashion-MNIST written out as an RGB image folder: the grey value in all three channels,
so the backbone has the 3 input channels the scenes need and sees the items as they appear there);
the cell the defaults pick is marked. Every run is a subprocess of the CLI, so this measures what a user gets.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

TARGET = 0.80
CLI = [sys.executable, "-m", "resnetkit"]


def run(cmd: list[str], log: Path) -> str:
    """Run a CLI command, keep its stderr in `log`, stop the benchmark on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    print(f"  {time.perf_counter() - t0:6.0f} s  {' '.join(cmd[2:])}", flush=True)
    return r.stderr


def length(a: argparse.Namespace) -> list[str]:
    """--budget-min M, or --epochs N for a comparison at equal steps (not timed: it needs no quiet machine)."""
    return ["--epochs", str(a.epochs)] if a.epochs else ["--budget-min", str(a.budget_min)]


def train(data: Path, out: Path, a: argparse.Namespace, extra: list[str]) -> tuple[list[dict], str]:
    """`resnetkit train --task segmentation --data DATA --budget-min M --out OUT EXTRA` -> (metrics rows,
    the start block the run printed)."""
    err = run([*CLI, "train", "--task", "segmentation", "--data", str(data), *length(a),
               "--out", str(out), *a.flags.split(), *extra], out.with_suffix(".log"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    block = "\n".join(ln for ln in err.splitlines() if ln.startswith(("segmentation settings", "  ")))
    return rows, block


def variant_flags(spec: str) -> list[str]:
    """'default' -> []; 'loss=ohem' -> ['--loss', 'ohem']; 'set:model.head=slim' -> ['--set', ...]."""
    if spec == "default":
        return []
    if spec.startswith("set:"):
        return ["--set", spec[4:]]
    key, _, value = spec.partition("=")
    return [f"--{key.replace('_', '-')}", value]


def shapes(a: argparse.Namespace, out: Path) -> int:
    data = out / "shapes"
    t0 = time.perf_counter()
    run([*CLI, "data", "make-shapes", str(data)], out / "make-shapes.log")
    gen_s = time.perf_counter() - t0
    results = {}
    for spec in a.variants.split(","):
        results[spec] = train(data, out / f"run-{re.sub(r'[^a-z0-9]+', '-', spec)}", a,
                              variant_flags(spec))
    print()
    print("# segmentation on the shapes set with the defaults (`resnetkit data make-shapes`: 1000 train / 200 val, "
          "64x64, 6 classes)")
    print(machine_line())
    print(f"{' '.join(length(a))} per run (warm-up, evaluations and the final save included); data generation "
          f"{gen_s:.0f} s (not in the budget); one trial each, seed 0; the machine may be shared")
    for spec, (rows, block) in results.items():
        print()
        print(f"## {spec}: resnetkit train --task segmentation --data DIR {' '.join(length(a))} "
              + " ".join(variant_flags(spec)))
        print("```")
        print(block)
        print("```")
        print("| epoch | minutes | train loss | val mIoU | val pixel acc | img/s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['epoch']} | {r['time_s'] / 60:.2f} | {r['train_loss']:.4f} | {r['val_miou']:.4f} "
                  f"| {r['val_pixel_acc']:.4f} | {r['img_s']:.1f} |")
    print()
    print("| run | final val mIoU | best val mIoU | per-class IoU (last) | target 0.80 |")
    print("|---|---|---|---|---|")
    ok = True
    for spec, (rows, _) in results.items():
        hit = next((r for r in rows if r["val_miou"] >= TARGET), None)
        ok = ok and (hit is not None or spec != "default")
        print(f"| {spec} | {rows[-1]['val_miou']:.4f} | {max(r['val_miou'] for r in rows):.4f} | "
              + " ".join(f"{v:.2f}" for v in rows[-1]["val_iou"]) + " | "
              + (f"at {hit['time_s'] / 60:.1f} min" if hit else "not reached") + " |")
    return 0 if ok else 1


def fm_rgb_folder(root: Path, n_per_class: int) -> Path:
    """Fashion-MNIST training images as an RGB image folder ROOT/CLASS/i.png (grey in all three channels)."""
    import numpy as np
    from PIL import Image

    from resnetkit.data import load_dataset

    ds = load_dataset("fashion_mnist")[0]  # the training split
    images, labels = np.asarray(ds.images), np.asarray(ds.labels)  # (N, 1, 28, 28) uint8, (N,)
    names = ds.class_names
    for k, name in enumerate(names):
        d = root / name.replace("/", "-").replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i, j in enumerate(np.flatnonzero(labels == k)[:n_per_class]):
            Image.fromarray(np.repeat(images[j, 0][..., None], 3, 2)).save(d / f"{i}.png")
    return root


def defaults_for(data: Path) -> tuple[str, str]:
    """(the head the defaults choose for `data`, the start block a run without flags prints)."""
    from resnetkit.data.segmentation import load_split, summarize
    from resnetkit.train.config import resolve
    from resnetkit.train.seg_defaults import format_choices, resolve_auto

    s = summarize(load_split(data, "train"))
    cfg, choices = resolve_auto(resolve(None, [], {"data.path": str(data), "schedule.epochs": 1},
                                        task="segmentation"), s)
    return cfg.model.head, format_choices(choices, s)


def scenes(a: argparse.Namespace, out: Path) -> int:
    data = out / "scenes"
    run([*CLI, "data", "make-scenes", str(data)], out / "make-scenes.log")
    folder = fm_rgb_folder(out / "fm_rgb", a.fm_per_class)
    run([*CLI, "train", "--model", "resnet20", "--data", f"folder:{folder}", "--set", "data.image_size=28",
         "--set", "data.channels=3", "--budget-min", str(a.pretrain_min), "--out", str(out / "fm_pretrain"),
         *a.flags.split()],
        out / "fm_pretrain.log")
    weights = out / "fm_pretrain" / "model.safetensors"
    cells = {}
    for head in a.heads.split(","):
        for init in ("scratch", "fm"):
            extra = ["--head", head] + (["--backbone-weights", str(weights)] if init == "fm" else [])
            cells[head, init] = train(data, out / f"run-{head}-{init}", a, extra)[0]
    extras = {spec: train(data, out / f"run-{re.sub(r'[^a-z0-9]+', '-', spec)}", a, variant_flags(spec))[0]
              for spec in a.variants.split(",") if spec != "default"}
    # What the defaults pick on this set (no flag at all), to mark its cell; the aspp scratch cell's other
    # settings are the defaults already, so it is not run twice.
    picked, block = defaults_for(data)
    print()
    print("# segmentation on the scenes set (`resnetkit data make-scenes`), val mIoU")
    print(machine_line())
    print(f"{' '.join(length(a))} per cell; Fashion-MNIST pretraining {a.pretrain_min} min on {a.fm_per_class} "
          "images per class (RGB folder); one trial each; the machine may be shared")
    print("```")
    print(block)
    print("```")
    print("| head | from scratch | from FM-pretrained resnet20 |")
    print("|---|---|---|")
    for head in a.heads.split(","):
        mark = " (defaults' head)" if head == picked else ""
        scratch, fm = (cells[head, init][-1]["val_miou"] for init in ("scratch", "fm"))
        print(f"| {head}{mark} | {scratch:.4f} | {fm:.4f} |")
    for spec, r in extras.items():
        print(f"| {' '.join(variant_flags(spec))} (scratch) | {r[-1]['val_miou']:.4f} | |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", choices=["shapes", "scenes"])
    p.add_argument("--out", default="runs/bench_seg_defaults")
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--epochs", type=float, default=0.0,
                   help="train each cell this many epochs instead of --budget-min (equal steps, not timed)")
    p.add_argument("--flags", default="", help="flags for every cell, e.g. '--threads 1' (the defaults: none)")
    p.add_argument("--variants", default="default", help="shapes: comma-separated cells, e.g. default,loss=ohem")
    p.add_argument("--heads", default="slim,aspp,deeplabv3plus", help="scenes: the heads to compare")
    p.add_argument("--pretrain-min", type=float, default=3.0, help="scenes: Fashion-MNIST pretraining budget")
    p.add_argument("--fm-per-class", type=int, default=1000, help="scenes: Fashion-MNIST images per class")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return shapes(a, out) if a.set == "shapes" else scenes(a, out)


if __name__ == "__main__":
    sys.exit(main())
