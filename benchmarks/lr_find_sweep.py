"""Does `train --lr-find`'s suggestion pick a good learning rate? The range test on the run's own model and
data, then a small sweep of full runs (the same command, a fixed wall-clock budget) at learning rates around it
and at the suggestion itself, judged on a validation split (the last 5,000 training images), never on test.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/lr_find_sweep.py --work /tmp/lrsweep
        [--budget-min 1.0] [--lrs 0.01,0.03,0.1,0.3,1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

BASE = ["--model", "resnet20", "--data", "fashion-mnist", "--set", "data.holdout=5000", "--seed", "0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/lrsweep")
    p.add_argument("--budget-min", type=float, default=1.0)
    p.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0")
    args = p.parse_args()
    work = Path(args.work)
    found = work / "lr_find" / "lr_find.json"
    if not found.is_file():
        subprocess.run([sys.executable, "-m", "resnetkit", "train", *BASE, "--epochs", "1", "--out",
                        str(work / "unused"), "--lr-find", str(work / "lr_find")], check=True, capture_output=True)
    suggestion = json.loads(found.read_text())["suggestion"]
    rows = []
    for lr in sorted({float(x) for x in args.lrs.split(",")} | {round(suggestion, 4)}):
        out = work / f"lr{lr:g}"
        if not (out / "metrics.jsonl").is_file():
            subprocess.run([sys.executable, "-m", "resnetkit", "train", *BASE, "--budget-min", str(args.budget_min),
                            "--lr", str(lr), "--out", str(out)], check=True, capture_output=True)
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append((lr, 100 * (1 - last["test_err"]), last["step"]))
    best = max(rows, key=lambda r: r[1])
    print(f"# resnet20 on Fashion-MNIST, validation = last 5,000 training images, {args.budget_min:g}-min runs, "
          f"seed 0; lr-find suggestion {suggestion:.3g}; {machine_line()}")
    print("| peak lr | validation top-1 % | steps | |")
    print("|---:|---:|---:|---|")
    for lr, acc, steps in rows:
        tag = ("suggested" if abs(lr - round(suggestion, 4)) < 1e-12 else "")
        tag += " best" if (lr, acc, steps) == best else ""
        print(f"| {lr:g} | {acc:.2f} | {steps} | {tag.strip()} |")


if __name__ == "__main__":
    main()
