"""Training throughput of ResNet-20 on Fashion-MNIST, batch 128.

Default (`--section step`): the Trainer's own training step (augmentation, forward, loss, backward,
optimizer) with `resnetkit train`'s defaults (run.amp and run.channels_last "auto", fused SGD) against
the earlier opt-in fast path (`--amp bf16 --channels-last`, per-tensor SGD), plain fp32, and the defaults
with foreach SGD; trials interleaved so load from elsewhere hits every row alike.
`--section profile`: torch.profiler over the step (defaults, and defaults + --compile): self CPU time
grouped into convolution, batch norm, relu, adds, optimizer, loss, augmentation, copies.
`--section optimizer`: the SGD step alone, per-tensor vs foreach vs fused.
`--section pipeline`: our in-memory batched augmentation vs a typical torchvision DataLoader pipeline
(pad 2 + random crop 28, horizontal flip, normalise), data only and with a training step.
Mean +- std over trials; warm-up steps are excluded and reported apart.

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

import resnetkit
from resnetkit.data import BatchAugment, load_dataset, normalize
from resnetkit.data.loader import derived_generator, epoch_batches
from resnetkit.train import Trainer, resolve
from resnetkit.train.optim import param_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.FashionMNIST does per item: a PIL image through the transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.numpy(), labels.numpy(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i, 0], mode="L")), int(self.labels[i])


def ours(train, batch: int):
    """Batches from our pipeline: gather, crop/flip on uint8, normalise, all batched."""
    aug = BatchAugment(pad=2, flip=True)
    mean, std = torch.tensor(train.mean), torch.tensor(train.std)
    epoch = 0
    while True:
        for i, idx in epoch_batches(len(train), batch, 0, epoch):
            p = aug.sample(batch, derived_generator(0, epoch, i, 1))
            yield normalize(aug.crop_flip(train.images[idx], p), mean, std), train.labels[idx]
        epoch += 1


def torchvision_loader(train, batch: int, workers: int):
    tf = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(train.mean, train.std)])
    loader = torch.utils.data.DataLoader(PILDataset(train.images, train.labels, tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    while True:
        yield from loader


def measure(batches, steps: int, warmup: int, model=None, channels_last=False, amp=False) -> tuple[float, float]:
    """(warm-up seconds, images per second over `steps` steps after warm-up)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if model is not None else None
    t0 = time.perf_counter()
    t_warm = None
    n = 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t_warm = time.perf_counter()
        if model is not None:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if i >= warmup:
            n += len(y)
        if i == warmup + steps - 1:
            break
    t1 = time.perf_counter()
    return t_warm - t0, n / (t1 - t_warm)


# row -> (flags for resolve, optimizer implementation: "foreach" | "for-loop" | "fused")
STEP_ROWS = {
    "defaults (amp auto, channels_last auto, fused SGD)": ({}, "fused"),
    "earlier opt-in: --amp bf16 --channels-last, for-loop SGD": ({"run.amp": "bf16", "run.channels_last": True},
                                                                "for-loop"),
    "fp32, contiguous, for-loop SGD (the earlier default)": ({"run.amp": "none", "run.channels_last": False},
                                                           "for-loop"),
    "defaults with foreach SGD": ({}, "foreach"),
    "defaults + --compile (forward and backward through inductor)": ({"run.compile": True}, "fused"),
}


def make_trainer(flags: dict, impl: str, batch: int, workdir: Path):
    """A Trainer of `resnetkit train --model resnet20 --data fashion-mnist` with `flags`, its SGD rebuilt
    with the implementation `impl` over the same parameter groups."""
    cfg = resolve(flags={"data.batch_size": batch, "schedule.epochs": 1, "run.out": str(workdir), **flags})
    trainer = Trainer(cfg)
    o = cfg.optim
    kw = {"foreach": impl == "foreach", "fused": True if impl == "fused" else None}
    trainer.optimizer = torch.optim.SGD(trainer.optimizer.param_groups, lr=o.lr, momentum=o.momentum,
                                        nesterov=o.nesterov, **kw)
    return trainer


def step_section(args) -> None:
    """The Trainer's step under each row's settings, trials interleaved across rows."""
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for i, (name, (flags, impl)) in enumerate(STEP_ROWS.items()):
            if trainers and "run.amp" not in flags:  # a variant of the defaults: the same choices as the first
                first = next(iter(trainers.values())).cfg.run  # row, not a second (noisy) start-up measurement
                flags = {"run.amp": first.amp, "run.channels_last": first.channels_last, **flags}
            trainers[name] = make_trainer(flags, impl, b, Path(tmp) / str(i))
        print(f"# {machine_line(args.threads)}")
        print(f"# ResNet-20 (in_chans=1), Fashion-MNIST 28x28, batch {b}: Trainer.train_step, {args.steps} timed steps "
              f"after {args.warmup} warm-up steps, {args.trials} interleaved trials; mean +- std (img/s)\n")
        for name, t in trainers.items():
            print(f"#   {name}: amp={t.cfg.run.amp} channels_last={t.cfg.run.channels_last}")
        rates: dict[str, list[float]] = {k: [] for k in trainers}
        warm: dict[str, float] = {}
        for trial in range(args.trials):
            for name, t in trainers.items():
                batches = epoch_batches(len(t.task.train_set), b, trial, 0)
                t.train_model.train()
                t0 = time.perf_counter()
                for _ in range(args.warmup):
                    i, idx = next(batches)
                    t.train_step(i, idx)
                warm.setdefault(name, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    i, idx = next(batches)
                    t.train_step(i, idx)
                rates[name].append(args.steps * b / (time.perf_counter() - t0))
    base = statistics.median(rates[next(iter(STEP_ROWS))])
    print(f"\n| {'training step':<58} | {'median img/s':>12} | {'mean +- std':>14} | {'vs defaults':>11} | "
          f"{'warm-up s':>9} |")
    print(f"|{'-' * 60}|{'-' * 14}|{'-' * 16}|{'-' * 13}|{'-' * 11}|")
    for name, r in rates.items():
        sd = statistics.stdev(r) if len(r) > 1 else 0.0
        print(f"| {name:<58} | {statistics.median(r):>12.0f} | {statistics.mean(r):>6.0f} +- {sd:>4.0f} | "
              f"{statistics.median(r) / base:>10.2f}x | {warm[name]:>9.2f} |", flush=True)


# Profiler op name -> the part of the step it belongs to (first match wins; the rest is "other").
CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("batch norm", ("batch_norm",)),
    ("relu", ("relu", "threshold_backward", "clamp_min")),
    ("residual add / grad accumulation", ("aten::add", "add_")),
    ("optimizer", ("sgd", "_foreach", "lerp")),
    ("loss + metrics", ("cross_entropy", "log_softmax", "nll_loss", "argmax", "aten::ne", "aten::sum",
                        "aten::stack")),
    ("augmentation + normalise", ("index", "gather", "where", "flip", "aten::sub", "aten::div", "pad", "randint",
                                  "aten::rand", "bernoulli")),
    ("pooling + classifier", ("pool", "mean", "addmm", "aten::mm", "linear")),
    ("layout / dtype copies", ("copy_", "to_copy", "contiguous", "clone", "empty_like")),
    ("compiled kernels", ("graph_", "cpp_fused", "compiledfunction", "torch-compiled")),
)


def category(op: str) -> str:
    low = op.lower()
    return next((name for name, keys in CATEGORIES if any(k in low for k in keys)), "other")


def profile_section(args) -> None:
    """torch.profiler over the Trainer's step: self CPU time per op, grouped into the parts of a step."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    b = args.batch_size
    rows = {"defaults": {}, "defaults + --compile": {"run.compile": True}}
    print(f"# {machine_line(args.threads)}")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, flags) in enumerate(rows.items()):
            t = make_trainer(flags, "fused", b, Path(tmp) / str(k))
            batches = epoch_batches(len(t.task.train_set), b, 0, 0)
            t.train_model.train()
            for _ in range(args.warmup):
                t.train_step(*next(batches))
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    t.train_step(*next(batches))
            wall = time.perf_counter() - t0
            events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
            total = sum(e.self_cpu_time_total for e in events)
            parts: dict[str, float] = {}
            for e in events:
                parts[category(e.key)] = parts.get(category(e.key), 0.0) + e.self_cpu_time_total
            print(f"\n## {name}: amp={t.cfg.run.amp} channels_last={t.cfg.run.channels_last}; {args.steps} profiled "
                  f"steps, {1e3 * wall / args.steps:.1f} ms/step wall under the profiler "
                  f"({args.steps * b / wall:.0f} img/s)\n")
            print("| part of the step | self CPU ms/step | share |")
            print("|---|---:|---:|")
            for part, us in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"| {part} | {us / 1e3 / args.steps:.2f} | {us / total:.1%} |")
            print("\n| op (top 12 by self CPU time) | calls/step | self CPU ms/step |")
            print("|---|---:|---:|")
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
                ms = e.self_cpu_time_total / 1e3 / args.steps
                print(f"| `{e.key[:70]}` | {e.count / args.steps:.0f} | {ms:.2f} |")


def optimizer_section(args) -> None:
    """SGD's step alone over ResNet-20's parameters (with momentum and weight decay as the Trainer's groups
    have them): per-tensor loop vs foreach vs fused, chunks of 20 steps interleaved, median per step."""
    model = resnetkit.create_model("resnet20", num_classes=10, in_chans=1)
    groups = param_groups(model, 1e-4, False)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    impls = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    opts = {k: torch.optim.SGD([dict(g) for g in groups], lr=0.1, momentum=0.9, **kw) for k, kw in impls.items()}
    times = {k: [] for k in opts}
    for _ in range(args.trials * 10):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(20):
                opt.step()
            times[k].append((time.perf_counter() - t0) / 20)
    print(f"# {machine_line(args.threads)}")
    print(f"# SGD step over ResNet-20's {sum(p.numel() for p in model.parameters()):,} parameters "
          f"({len(list(model.parameters()))} tensors); {args.trials * 10} chunks of 20 steps, interleaved\n")
    print(f"| {'SGD implementation':<20} | {'median ms/step':>14} | {'mean +- std':>16} |")
    print(f"|{'-' * 22}|{'-' * 16}|{'-' * 18}|")
    for k, ts in times.items():
        ms = [1e3 * t for t in ts]
        sd = statistics.stdev(ms) if len(ms) > 1 else 0.0
        print(f"| {k:<20} | {statistics.median(ms):>14.3f} | {statistics.mean(ms):>7.3f} +- {sd:>5.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=["step", "optimizer", "pipeline", "profile"], default="step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="#   %(message)s")
    if args.section == "step":
        return step_section(args)
    if args.section == "optimizer":
        return optimizer_section(args)
    if args.section == "profile":
        return profile_section(args)
    train, _ = load_dataset("fashion_mnist")
    b = args.batch_size
    pipelines = {
        "ours (in-memory, batched)": lambda: ours(train, b),
        "torchvision DataLoader, 0 workers": lambda: torchvision_loader(train, b, 0),
        "torchvision DataLoader, 2 workers": lambda: torchvision_loader(train, b, 2),
    }
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {torch.get_num_threads()} torch threads, {len(__import__('os').sched_getaffinity(0))} cores; "
          f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"numpy {np.__version__}")
    print(f"# ResNet-20 (in_chans=1) on Fashion-MNIST 28x28, batch {b}; {args.steps} timed steps after "
          f"{args.warmup} warm-up steps; {args.trials} trials; mean +- std (img/s)\n")
    print(f"| {'pipeline':<36} | {'mode':<22} | {'img/s':>16} | {'warm-up s':>9} |")
    print(f"|{'-' * 38}|{'-' * 24}|{'-' * 18}|{'-' * 11}|")
    modes = [("data only", None), ("train fp32", dict(channels_last=False, amp=False)),
             ("train bf16 + ch-last", dict(channels_last=True, amp=True))]
    for mode, opts in modes:
        for name, make in pipelines.items():
            rates, warms = [], []
            for trial in range(args.trials):
                torch.manual_seed(trial)
                model = None
                if opts is not None:
                    model = resnetkit.create_model("resnet20", num_classes=10, in_chans=1)
                    if opts["channels_last"]:
                        model = model.to(memory_format=torch.channels_last)
                w, r = measure(make(), args.steps, args.warmup, model, **(opts or {}))
                rates.append(r)
                warms.append(w)
            sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
            print(f"| {name:<36} | {mode:<22} | {statistics.mean(rates):>8.0f} +- {sd:>5.0f} | "
                  f"{statistics.mean(warms):>9.2f} |", flush=True)


if __name__ == "__main__":
    main()
