"""Peak memory and time of one training step with and without gradient checkpointing (run.grad_checkpointing,
`model.set_grad_checkpointing`), side by side in one run.

Each case runs in a fresh process, which builds the model, takes 2 untimed warm-up steps, then 3 timed ones;
peak memory is the process's peak resident set (CPU: ru_maxrss) minus its resident set right before the first
step (the model, optimizer state and imported libraries), or torch.cuda.max_memory_allocated on a GPU.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/grad_checkpointing.py [--model resnet50]
        [--batch 32] [--size 224] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch
import resnetkit
name, batch, size, threads, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads(threads)
torch.manual_seed(0)
gpu = torch.cuda.is_available()
dev = "cuda" if gpu else "cpu"
m = resnetkit.create_model(name, num_classes=1000).to(dev).train()
m.set_grad_checkpointing(ckpt)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(batch, 3, size, size, device=dev), torch.randint(0, 1000, (batch,), device=dev)
def step():
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if gpu: torch.cuda.synchronize()
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * resource.getpagesize()
for _ in range(2):
    step()
t0 = time.perf_counter()
for _ in range(3):
    step()
ms = (time.perf_counter() - t0) / 3 * 1e3
peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"peak_mib": peak / 2**20, "step_ms": ms}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rows = {}
    for ckpt in (False, True):
        r = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.size), str(args.threads),
                            "1" if ckpt else "0"], capture_output=True, text=True, check=True)
        rows[ckpt] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"# {args.model}, batch {args.batch} at {args.size}x{args.size}, fp32, one SGD step; {machine_line()}")
    print("| grad checkpointing | peak memory of the step (MiB) | step (ms) |")
    print("|---|---:|---:|")
    for ckpt, r in rows.items():
        print(f"| {'on' if ckpt else 'off'} | {r['peak_mib']:,.0f} | {r['step_ms']:,.0f} |")
    off, on = rows[False], rows[True]
    print(f"\non/off: memory {on['peak_mib'] / off['peak_mib']:.2f}x, time {on['step_ms'] / off['step_ms']:.2f}x")


if __name__ == "__main__":
    main()
