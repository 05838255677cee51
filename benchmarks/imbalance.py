"""Class weights on deliberately imbalanced data: does `--class-weights auto` lift the rare class and macro-F1?

Fashion-MNIST training images, 500 of each class but 25 of class 0 (T-shirt/top, 1:20), as a 28 px greyscale
image folder with a balanced validation folder (100 of each class, from the test split); resnet20 trained with
the same command twice per seed, with and without `--class-weights auto` (inverse frequency), then
`resnetkit eval` on the validation folder: macro-F1, balanced accuracy and the rare class's recall.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/imbalance.py --work /tmp/imbalance [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from resnetkit.data import load_dataset  # noqa: E402

PER_CLASS, RARE, RARE_N, VAL = 500, 0, 25, 100
RARE_NAME = "T-shirt-top"  # Fashion-MNIST's class 0 as a folder name


def write(root: Path, images, labels, names, counts) -> None:
    for c, n in enumerate(counts):
        d = root / names[c].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:n]:
            Image.fromarray(images[i, 0]).save(d / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/imbalance")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--data-dir", help="where the Fashion-MNIST idx files are (default: resnetkit's lookup)")
    args = p.parse_args()
    work = Path(args.work)
    data = work / "data"
    if not (data / "train").is_dir():
        train, test = load_dataset("fashion-mnist", args.data_dir)
        names = train.class_names
        counts = [RARE_N if c == RARE else PER_CLASS for c in range(10)]
        write(data / "train", train.images.numpy(), train.labels.numpy(), names, counts)
        write(data / "val", test.images.numpy(), test.labels.numpy(), names, [VAL] * 10)
    rows = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for weights in ("none", "auto"):
            out = work / f"seed{seed}_{weights}"
            if not (out / "model.safetensors").is_file():
                subprocess.run([sys.executable, "-m", "resnetkit", "train", "--model", "resnet20", "--data",
                                f"folder:{data}", "--set", "data.channels=1", "--set", "data.image_size=28",
                                "--epochs", str(args.epochs), "--batch-size", "64", "--lr", "0.05", "--seed",
                                str(seed), "--class-weights", weights, "--out", str(out)], check=True,
                               capture_output=True)
            ev = out / "eval"
            if not (ev / "eval.json").is_file():
                subprocess.run([sys.executable, "-m", "resnetkit", "eval", "--weights", str(out / "model.safetensors"),
                                "--data", f"folder:{data}", "--backend", "eager", "--out", str(ev)], check=True,
                               capture_output=True)
            r = json.loads((ev / "eval.json").read_text())
            rare = RARE_NAME  # the folder's classes are sorted by name: find the rare one by its name
            rows.setdefault(weights, []).append((r["macro_f1"], r["balanced_accuracy"], r["per_class"][rare]["recall"],
                                                 r["top1"]))
    print(f"# resnet20 on Fashion-MNIST with class {RARE} at 1:20 ({RARE_N} vs {PER_CLASS} training images), "
          f"{args.epochs} epochs, seeds {args.seeds}; validation 100 per class; {machine_line()}")
    print("| class weights | macro-F1 (%) | balanced accuracy (%) | rare-class recall (%) | top-1 (%) |")
    print("|---|---:|---:|---:|---:|")
    for w, rs in rows.items():
        cells = []
        for k in range(4):
            v = [100 * r[k] for r in rs]
            cells.append(f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""))
        print(f"| {w} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
