"""Whole training steps on an ImageNet-like JPEG folder at 224 px: ours vs torchvision's reference recipe.

Rows, for each of ResNet-18 and ResNet-50 (same global batch, same DataLoader worker count):
  ours, JPEG streaming     `resnetkit train --recipe imagenet-resnet50-classic --amp auto` on the folder
                           (streamed: workers decode, RandomResizedCrop + flip, uint8 batches)
  torchvision reference    torchvision.models.resnetXX, fp32 and under bf16 autocast, ImageFolder +
                           RandomResizedCrop + flip + ToTensor + Normalize in a DataLoader, SGD 0.1 x
                           batch/256, momentum 0.9, wd 1e-4
  ours, in-memory batches  the same Trainer and recipe on 224 px images already in memory (the upper bound:
                           no decoding at all)
img/s counts the timed steps after --warmup steps (start-up, the first step's allocations excluded).
The JPEG row also reports the peak PSS of the whole process tree (trainer + workers) while it trains
on a split of 10x the folder (hard links: 50,000 images for the default 5,000).

The folder is benchmarks/data_pipeline.py's (made there on first use and cached in --out).

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/train_imagenet_like.py [--archs resnet18,resnet50]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.train import Trainer, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from data_pipeline import build_folder, linked_copy, tree_memory  # noqa: E402


class StepClock:
    """A Trainer hook: the time of every optimizer step (and the peak process-tree memory meanwhile)."""

    def __init__(self, watch_memory: bool):
        self.times: list[float] = []
        self.peak, self.done = 0, threading.Event()
        if watch_memory:
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while not self.done.is_set():
            self.peak = max(self.peak, tree_memory(os.getpid()))
            time.sleep(0.25)

    def on_step(self, trainer):
        self.times.append(time.perf_counter())


def rate(times: list[float], warmup: int, batch: int) -> float:
    steps = times[warmup:]
    return (len(steps) - 1) * batch / (steps[-1] - steps[0])


def ours(arch: str, data: str, args, stream: str, watch_memory: bool = False) -> tuple[float, int, str]:
    """(img/s, peak tree PSS, the amp auto chose) of resnetkit's Trainer with the classic recipe."""
    clock = StepClock(watch_memory)
    with tempfile.TemporaryDirectory() as out:
        flags = {"model.arch": arch, "data.name": data, "data.stream": stream, "data.batch_size": args.batch,
                 "data.workers": args.workers, "data.image_size": 224, "data.eval_subset": args.batch,
                 "schedule.max_steps": args.warmup + args.steps + 1, "run.out": f"{out}/run", "run.amp": "auto",
                 "run.threads": args.threads}
        trainer = Trainer(resolve(recipe="imagenet-resnet50-classic", flags=flags), hooks=[clock])
        trainer.fit()
    clock.done.set()
    return rate(clock.times, args.warmup, args.batch), clock.peak, trainer.cfg.run.amp


def reference(arch: str, root: Path, args, amp: bool = False) -> float:
    """torchvision's reference training loop (references/classification/train.py), timed likewise: fp32, or
    with `amp` the step under bf16 autocast (what its --amp does with fp16 on a GPU; bf16 is the CPU's)."""
    import torchvision  # noqa: PLC0415
    from torchvision import transforms  # noqa: PLC0415

    torch.manual_seed(0)
    t = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(str(root), t)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True)
    model = getattr(torchvision.models, arch)(num_classes=len(ds.classes)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * args.batch / 256, momentum=0.9, weight_decay=1e-4)
    times = []
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
        if i + 1 >= args.warmup + args.steps + 1:
            break
    return rate(times, args.warmup, args.batch)


def one_per_class(root: Path, dst: Path, n: int) -> Path:
    """n images of each class as hard links: a small folder that fits in memory at 224 px."""
    if not dst.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            (dst / d.name).mkdir(parents=True)
            for f in sorted(d.glob("*.jpg"))[:n]:
                os.link(f, dst / d.name / f.name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/resnetkit-jpeg", help="where data_pipeline.py's folder is (or is made)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per row")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    root = build_folder(Path(args.out), args.n)
    big = linked_copy(root, Path(args.out) / "jpeg_x10", 10)
    small = one_per_class(root, Path(args.out) / "jpeg_2pc", 2)
    n_big = sum(1 for _ in big.rglob("*.jpg"))
    print(f"\n## Training steps at 224 px, global batch {args.batch}, {args.workers} DataLoader workers, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    print(machine_line(args.threads) + "; rows run one after another: compare the ratios\n")
    print("| model | ours, JPEG streaming (img/s) | torchvision reference fp32 (img/s) | torchvision reference bf16 "
          "autocast (img/s) | ours, in-memory (img/s) | JPEG / in-memory | ours / reference fp32 | ours / reference "
          f"bf16 | amp (auto) | peak PSS, JPEG run over {n_big} images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        jpeg, peak, amp = ours(arch, f"folder:{big}", args, "on", watch_memory=True)
        ref = reference(arch, root, args)
        ref_bf16 = reference(arch, root, args, amp=True)
        mem, _, _ = ours(arch, f"folder:{small}", args, "off")
        print(f"| {arch} | {jpeg:.2f} | {ref:.2f} | {ref_bf16:.2f} | {mem:.2f} | {jpeg / mem:.0%} | "
              f"{jpeg / ref:.2f}x | "
              f"{jpeg / ref_bf16:.2f}x | {amp} | {peak / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
