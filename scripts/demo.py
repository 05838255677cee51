"""`make demo`: train ResNet-20 on Fashion-MNIST in about five minutes on a small CPU, then evaluate
and classify a few test images, all through the `resnetkit` command line (in-process).

Leaves runs/demo/ with model.safetensors, metrics.jsonl, steps.jsonl, learning_curve.png, confusion_matrix.png,
reliability.png, worst.png, eval.json and samples/*.png.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from resnetkit.cli import main
from resnetkit.data import datasets, load_dataset

RUN = Path("runs/demo")
BUDGET_MIN = float(os.environ.get("DEMO_BUDGET_MIN", "4.5"))  # training, incl. per-epoch evaluation
SYSTEM_DIR = Path(datasets.IDX_DATASETS["fashion_mnist"][3])


def ensure_fashion_mnist() -> None:
    """Install the Debian package when we may; otherwise the library's lookup (cache, download) decides."""
    if all((SYSTEM_DIR / f"{s}.gz").is_file() for s in datasets.IDX_FILES):
        return
    if (datasets.cache_dir("fashion_mnist") / f"{datasets.IDX_FILES[0]}.gz").is_file():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist", flush=True)
        ok = subprocess.run("apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist", shell=True).returncode
        if ok == 0:
            return
    print("Fashion-MNIST not found. Either run `sudo apt-get install dataset-fashion-mnist`, or put the four "
          f"files ({', '.join(s + '.gz' for s in datasets.IDX_FILES)}) in {datasets.cache_dir('fashion_mnist')};"
          " otherwise the demo tries to download them.", flush=True)


def write_samples(n: int = 6) -> list[tuple[Path, str]]:
    """Save the first n test images as PNGs, as a user would have them, with their true labels."""
    _, test = load_dataset("fashion_mnist")
    folder = RUN / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        label = test.class_names[int(test.labels[i])]
        path = folder / f"test{i:02d}_{label.replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(test.images[i, 0].numpy()).save(path)
        out.append((path, label))
    return out


def step(title: str, argv: list[str]) -> None:
    print(f"\n$ resnetkit {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc != 0:
        sys.exit(f"demo: `{title}` failed with exit code {rc}")


def demo() -> None:
    t0 = time.perf_counter()
    ensure_fashion_mnist()
    if (RUN / ".resnetkit-run").is_file():  # the demo's own run from an earlier time: start afresh
        shutil.rmtree(RUN)
    elif RUN.exists() and any(RUN.iterdir()):
        sys.exit(f"demo: {RUN} holds files that are not a resnetkit run; move them away and run `make demo` again")
    # The defaults and nothing else (precision, channels_last, augmentation for the run's length, flip-TTA at
    # the end are automatic): what benchmarks/time_to_accuracy.py measures.
    step("train", ["train", "--model", "resnet20", "--data", "fashion_mnist", "--budget-min", str(BUDGET_MIN),
                   "--out", str(RUN)])
    step("eval", ["eval", "--weights", str(RUN / "model.safetensors"), "--data", "fashion_mnist", "--tta", "flip"])
    samples = write_samples()
    print("\ntrue labels: " + ", ".join(f"{p.name}={label}" for p, label in samples))
    step("predict", ["predict", str(RUN / "samples"), "--weights", str(RUN / "model.safetensors"), "--top-k", "2"])
    result = json.loads((RUN / "eval.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nFashion-MNIST test accuracy {100 * result['top1']:.2f}% with flip-TTA "
          f"(top-5 {100 * result['top5']:.2f}%); "
          f"wall time {time.perf_counter() - t0:.0f} s; peak RSS {peak_gib:.2f} GiB")
    print(f"see {RUN}/: model.safetensors, metrics.jsonl, steps.jsonl, learning_curve.png, confusion_matrix.png, "
          "reliability.png, worst.png, eval.json")


if __name__ == "__main__":
    demo()
