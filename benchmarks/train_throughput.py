"""Training throughput: our in-memory batched augmentation vs a typical torchvision DataLoader pipeline.

Both feed ResNet-20 (1 input channel) on Fashion-MNIST, batch 128, with the same augmentation (pad 2 +
random crop 28, horizontal flip, normalise). Reports data-only and full-training-step throughput as
mean +- std over trials; warm-up steps are excluded and reported apart.

    .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--steps 30] [--trials 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

import resnetkit
from resnetkit.data import BatchAugment, load_dataset, normalize
from resnetkit.data.loader import derived_generator, epoch_batches


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
