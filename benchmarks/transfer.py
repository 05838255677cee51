"""Transfer on real data: does `resnetkit train --init` help when the new task has 50 images per class?

1. Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress, coat) saved as a JPEG folder at 64 px;
   a resnet18 pretrained on it through the CLI (`resnetkit train`, a short wall-clock budget).
2. Classes 5-9 (sandal, shirt, sneaker, bag, ankle boot): 50 training images per class, the same 250 for
   both runs; fine-tuned from step 1's weights (`--init`) and trained from scratch, with the same command,
   steps and batch otherwise.
3. Both evaluated on every Fashion-MNIST test image of classes 5-9 (5,000), by `resnetkit.train.evaluate_file`.

Greyscale JPEGs (L, one channel): the data has no colour, and both runs see the same input. Prints the
commands, their wall times and a table; the machine and versions in the caption.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/transfer.py --work /tmp/transfer
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from resnetkit.data import load_dataset  # noqa: E402
from resnetkit.train import evaluate_file  # noqa: E402

SIZE = 64


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str], per_class: int | None,
                 classes: range) -> int:
    """Save up to `per_class` images of each class in `classes` as ROOT/NAME/i.jpg (64 px, quality 90)."""
    n = 0
    for c in classes:
        folder = root / names[c].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(labels == c)[:per_class]
        for i in idx:
            im = Image.fromarray(images[i, 0]).resize((SIZE, SIZE), Image.BILINEAR)
            im.save(folder / f"{i}.jpg", quality=90)
        n += len(idx)
    return n


def make_data(work: Path, pretrain_per_class: int, few: int) -> None:
    train, test = load_dataset("fashion_mnist")
    xs, ys, xt, yt = train.images.numpy(), train.labels.numpy(), test.images.numpy(), test.labels.numpy()
    names = train.class_names
    write_folder(work / "pretrain" / "train", xs, ys, names, pretrain_per_class, range(0, 5))
    write_folder(work / "pretrain" / "val", xt, yt, names, 100, range(0, 5))  # a quick check while pretraining
    write_folder(work / "target" / "train", xs, ys, names, few, range(5, 10))
    write_folder(work / "target" / "val", xt, yt, names, None, range(5, 10))  # every test image of 5-9


def run(cmd: list[str], cwd: Path) -> float:
    """Run a CLI command, echoing it; returns its wall time."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "resnetkit", *cmd], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print("\n".join("    " + ln for ln in r.stderr.splitlines() if ln.startswith(("precision", "init", "normal",
                                                                                  "done", "new"))), flush=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/resnetkit-transfer", help="a new folder for the images and runs")
    ap.add_argument("--pretrain-per-class", type=int, default=1200)
    ap.add_argument("--pretrain-min", type=float, default=2.0, help="pretraining budget in minutes")
    ap.add_argument("--few", type=int, default=50, help="training images per class of the new task")
    ap.add_argument("--steps", type=int, default=150, help="steps of each small-data run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty; give a new folder (--work)")
    work.mkdir(parents=True, exist_ok=True)
    make_data(work, args.pretrain_per_class, args.few)
    common = ["--model", "resnet18", "--set", f"data.image_size={SIZE}", "--set", "data.channels=1",
              "--threads", str(args.threads), "--seed", "0"]
    t_pre = run(["train", "--data", "folder:pretrain", *common, "--budget-min", str(args.pretrain_min),
                 "--batch-size", "64", "--lr", "0.1", "--set", "schedule.warmup_steps=50", "--out", "pre"], work)
    few = ["train", "--data", "folder:target", *common, "--batch-size", "50", "--lr", "0.05",
           "--set", f"schedule.steps={args.steps}", "--set", "schedule.warmup_steps=10",
           "--set", "optim.weight_decay=5e-4", "--set", "data.eval_subset=250"]
    times = {"fine-tuned from the pretrained weights (--init)":
             (run([*few, "--init", "pre/model.safetensors", "--out", "ft"], work), "ft"),
             "from scratch": (run([*few, "--out", "scratch"], work), "scratch")}
    print(f"\n# {machine_line(args.threads)}  (shared machine: other jobs were running)")
    pre = evaluate_file(work / "pre" / "model.safetensors", f"folder:{work / 'pretrain'}")
    print(f"# pretraining: resnet18 on {args.pretrain_per_class} x 5 JPEGs of classes 0-4 at {SIZE} px, "
          f"{args.pretrain_min} min budget ({t_pre:.0f} s wall): {100 * pre['top1']:.1f}% on 500 test images of 0-4")
    print(f"# new task: classes 5-9, {args.few} training images per class, {args.steps} steps of batch 50 each; "
          "test: all Fashion-MNIST test images of classes 5-9\n")
    print(f"| {'run':<48} | {'test top-1':>10} | {'n':>5} | {'wall s':>6} |")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 7}|{'-' * 8}|")
    for name, (t, out) in times.items():
        r = evaluate_file(work / out / "model.safetensors", f"folder:{work / 'target'}")
        print(f"| {name:<48} | {100 * r['top1']:>9.2f}% | {r['n']:>5} | {t:>6.0f} |", flush=True)


if __name__ == "__main__":
    main()
