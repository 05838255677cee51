"""Our `resnet50` against torchvision's `resnet50`: same weights, same input, same process.

    .venv/bin/python benchmarks/forward_vs_torchvision.py [--batch 16] [--size 224] [--threads 2] [--trials 10]

Eval mode, fp32, NCHW, no_grad. Trials alternate between the two models; warm-up is excluded.
Prints a markdown table with images/s (median and mean +- sd) and the ratio ours/theirs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from common import forward_parser, forward_setup, interleaved, machine_line, summarize  # noqa: E402

from resnetkit.convert.torchvision import from_torchvision  # noqa: E402


def main() -> None:
    args = forward_parser(__doc__).parse_args()
    forward_setup(args)
    tv = torchvision.models.resnet50().eval()
    ours = from_torchvision(tv.state_dict()).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        diff = (tv(x) - ours(x)).abs().max().item()

        def run(m):
            return lambda: m(x)

        times = interleaved({"torchvision resnet50": run(tv), "resnetkit resnet50": run(ours)}, args.trials)
    print(machine_line(args.threads))
    print(f"batch {args.batch}, {args.size}x{args.size}, fp32 eval, {args.trials} trials after 2 warm-up; "
          f"max |ours - torchvision| = {diff:.2e}\n")
    print("| model | img/s (median) | img/s (mean +- sd) | ms/batch (median) |")
    print("|---|---|---|---|")
    rates = {}
    for name, ts in times.items():
        med = summarize(ts)[0]
        rates[name] = args.batch / med
        _, ips_mean, ips_sd = summarize([args.batch / t for t in ts])
        print(f"| {name} | {args.batch / med:.2f} | {ips_mean:.2f} +- {ips_sd:.2f} | {1000 * med:.1f} |")
    ratio = rates["resnetkit resnet50"] / rates["torchvision resnet50"]
    print(f"\nours / torchvision (median throughput): {ratio:.3f}")


if __name__ == "__main__":
    main()
