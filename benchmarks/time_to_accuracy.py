"""Time to accuracy: Fashion-MNIST test accuracy of ResNet-20 against the wall-clock training budget.

Each budget is a full run of `resnetkit train --budget-min M` (the whole schedule, warm-up and decay,
fitted into the budget), so the table shows what a person gets for the time they have. Trials use
different seeds; mean +- std is printed.

    .venv/bin/python benchmarks/time_to_accuracy.py [--budgets 1 2 4.5] [--trials 1] [--out runs/tta]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from resnetkit.cli import main as cli


def run(budget_min: float, seed: int, out: Path, extra: list[str]) -> dict:
    argv = ["train", "--model", "resnet20", "--data", "fashion_mnist", "--budget-min", str(budget_min),
            "--seed", str(seed), "--out", str(out), "--set", "schedule.warmup_steps=100", *extra]
    if cli(argv) != 0:
        raise SystemExit(f"run failed: {' '.join(argv)}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"acc": 1 - rows[-1]["test_err"], "wall_s": rows[-1]["time_s"], "epochs": rows[-1]["epoch"],
            "steps": rows[-1]["step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 2.0, 4.5])
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels-last")
    args = ap.parse_args()
    extra = [] if args.fp32 else ["--amp", "bf16", "--channels-last"]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        results = {b: [run(b, s, root / f"budget{b}_seed{s}", extra) for s in range(args.trials)]
                   for b in args.budgets}
    print(f"\n# {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{'fp32' if args.fp32 else 'bf16 autocast + channels-last'}; {args.trials} trial(s) per budget")
    print("| budget min | test acc % (mean +- std) | epochs | steps | wall s |")
    print("|-----------:|-------------------------:|-------:|------:|-------:|")
    for b, rs in results.items():
        accs = [100 * r["acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {b:>10.1f} | {statistics.mean(accs):>15.2f} +- {sd:4.2f} | {rs[0]['epochs']:>6} | "
              f"{rs[0]['steps']:>5} | {statistics.mean(r['wall_s'] for r in rs):>6.0f} |")


if __name__ == "__main__":
    main()
