"""Where the ResNet-20 Fashion-MNIST training step goes: each distinct 3x3 convolution of the net, timed alone.

Forward and backward (weight gradient; input gradient too except for the stem, whose input needs none) of
every distinct conv shape of resnet20 at 28x28 and batch 128, under bf16 autocast and in fp32, channels_last
and contiguous, side by side in one run. The per-step total multiplies each shape by how often the net has it.
It bounds what removing non-convolution work from the step can give: when the convolutions alone take about
as long as the whole step (benchmarks/train_throughput.py), only faster convolution kernels move it.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/conv_layers.py [--batch 128] [--reps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

# (name, in channels, out channels, input side, stride, how many resnet20 has at 28x28 input)
LAYERS = (("stem 1->16", 1, 16, 28, 1, 1), ("stage 1, 16->16 @28", 16, 16, 28, 1, 6),
          ("stage 2 first, 16->32 /2", 16, 32, 28, 2, 1), ("stage 2, 32->32 @14", 32, 32, 14, 1, 5),
          ("stage 3 first, 32->64 /2", 32, 64, 14, 2, 1), ("stage 3, 64->64 @7", 64, 64, 7, 1, 5))
MODES = (("bf16", True, True), ("bf16", False, True), ("fp32", True, False), ("fp32", False, False))


def time_conv(cin: int, cout: int, side: int, stride: int, batch: int, reps: int, channels_last: bool,
              bf16: bool) -> tuple[float, float]:
    """Mean forward and backward milliseconds of one conv."""
    conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    x = torch.randn(batch, cin, side, side)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(cin != 1)
    fwd = bwd = 0.0
    for i in range(reps + 3):  # 3 warm-up passes
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        t1 = time.perf_counter()
        y.float().sum().backward()
        t2 = time.perf_counter()
        if i >= 3:
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return 1e3 * fwd / reps, 1e3 * bwd / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {machine_line(args.threads)}")
    print(f"# resnet20 convolutions at 28x28, batch {args.batch}, {args.reps} timed passes each; ms forward / backward")
    print("| conv | x in net | " + " | ".join(f"{p} {'channels_last' if cl else 'contiguous'}" for p, cl, _ in MODES)
          + " |")
    print("|---|---:|" + "---:|" * len(MODES))
    totals = [0.0] * len(MODES)
    for name, cin, cout, side, stride, count in LAYERS:
        cells = []
        for j, (_, cl, bf16) in enumerate(MODES):
            f, b = time_conv(cin, cout, side, stride, args.batch, args.reps, cl, bf16)
            totals[j] += count * (f + b)
            cells.append(f"{f:.2f} / {b:.2f}")
        print(f"| {name} | {count} | " + " | ".join(cells) + " |", flush=True)
    print("| **all convolutions of one step** | | " + " | ".join(f"**{t:.0f} ms**" for t in totals) + " |")
    print(f"\nAt {totals[0]:.0f} ms of convolutions per step of {args.batch}, bf16 channels_last caps the step at "
          f"{1e3 * args.batch / totals[0]:,.0f} img/s before anything else runs.")


if __name__ == "__main__":
    main()
