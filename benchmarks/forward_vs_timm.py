"""Our `resnet50d`, `resnext50_32x4d`, `seresnet50`, `wide_resnet50_2` against timm's: same weights (timm's
random ones, mapped in with `from_timm`), same input, same process.

    .venv/bin/python benchmarks/forward_vs_timm.py [--batch 16] [--size 224] [--threads 2] [--trials 10]

Eval mode, fp32, NCHW, no_grad. For each architecture the trials alternate between the two models (half
of them timm first, half ours first); warm-up is excluded. Prints a markdown table with images/s (median
and mean +- sd), ms per batch, the ratio ours/timm and the largest output difference. timm is a test
dependency (`pip install -e .[test]`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import forward_parser, forward_setup, interleaved, machine_line, summarize  # noqa: E402

from resnetkit.convert import from_timm  # noqa: E402

ARCHS = ("resnet50d", "resnext50_32x4d", "seresnet50", "wide_resnet50_2")


def fresh_timm(arch: str) -> torch.nn.Module:
    """timm's net with random weights copied into newly allocated storage, as `from_timm` gives ours: left
    where timm's init wrote them, the same weights ran ~5% slower here (same code, same values), which is
    memory placement, not either implementation."""
    model = timm.create_model(arch, pretrained=False)
    copy = timm.create_model(arch, pretrained=False, device="meta")
    copy.to_empty(device="cpu")
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def main() -> None:
    ap = forward_parser(__doc__)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    args = ap.parse_args()
    forward_setup(args)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    machine = machine_line(args.threads)  # before the runs: its load average is the machine's, not ours
    for arch in args.archs:
        theirs = fresh_timm(arch)
        ours = from_timm(theirs.state_dict(), arch=arch).eval()
        with torch.no_grad():
            ref = theirs(x)
            diff = ((ours(x) - ref).abs().max() / ref.abs().max()).item()

            def run(m):
                return lambda: m(x)

            # Half the trials run timm first, half ours first, so neither always follows the other.
            first = interleaved({"timm": run(theirs), "resnetkit": run(ours)}, args.trials - args.trials // 2)
            second = interleaved({"resnetkit": run(ours), "timm": run(theirs)}, args.trials // 2, warmup=0)
            times = {k: first[k] + second[k] for k in first}
        rows.append((arch, times, diff))
        del theirs, ours

    print(machine)
    print(f"timm {timm.__version__}; batch {args.batch}, {args.size}x{args.size}, fp32 eval, {args.trials} trials "
          "per model after 2 warm-up, alternating (half timm first, half resnetkit first)\n")
    print("| model | impl | img/s (median) | img/s (mean +- sd) | ms/batch (median) | ours/timm | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for arch, times, diff in rows:
        rates = {k: args.batch / summarize(ts)[0] for k, ts in times.items()}
        for impl, ts in times.items():
            med = summarize(ts)[0]
            _, ips_mean, ips_sd = summarize([args.batch / t for t in ts])
            ratio = f"{rates['resnetkit'] / rates['timm']:.3f}" if impl == "resnetkit" else ""
            print(f"| {arch} | {impl} | {args.batch / med:.2f} | {ips_mean:.2f} +- {ips_sd:.2f} | {1000 * med:.1f} | "
                  f"{ratio} | {diff:.1e} |")


if __name__ == "__main__":
    main()
