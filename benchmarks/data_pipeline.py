"""JPEG input pipelines: finished 224x224 batches per second, ours vs torchvision's reference.

The data: an ImageNet-like JPEG folder of --n images (default 5,000 in 100 classes) made from the sample
photographs scikit-learn and scikit-image ship (random crops, scales and colour shifts, saved at 375x500
to 1200x1600, JPEG quality 90), built once in --out and reused (pip install scikit-image; without it
only scikit-learn's two photos are used).

Pipelines (same DataLoader worker count, same batch size, batches finished = normalised float32):
  train  ours: resnetkit.data streaming (RandomResizedCrop box first, JPEG draft, crop+resize in one
         PIL call, uint8 batches, normalised in the main process), with and without draft;
         torchvision: ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize
  eval   ours: resize 256 / center crop 224 as one box resize (draft on);
         torchvision: Resize(256) + CenterCrop(224) + ToTensor + Normalize
Trials are interleaved; each trial starts a fresh loader, skips --warmup batches (worker start-up),
then times --batches batches. Also: peak memory (sum of PSS over the process tree, so shared pages
count once) while streaming a --n-image split and a 10x larger one (hard links to the same files).

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/data_pipeline.py [--out /tmp/rk-jpeg]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetkit.data import StreamOptions, load_classification, normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

SIZES = ((375, 500), (1200, 1600))  # smallest and largest (h, w) of the made images


def sample_photos() -> list[np.ndarray]:
    """The colour photographs scikit-learn (2) and scikit-image (if installed) ship."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    photos = list(load_sample_images().images)
    try:
        import skimage.data as sk  # noqa: PLC0415

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                     "retina", "stereo_motorcycle"):
            a = getattr(sk, name)()
            photos.append((a[0] if isinstance(a, tuple) else a)[..., :3])
    except ImportError:
        print("scikit-image not installed: using scikit-learn's two photos only", file=sys.stderr)
    return photos


def _make_one(job: tuple) -> None:
    path, photo_i, seed, sizes = job
    rs = np.random.RandomState(seed)
    src = PHOTOS[photo_i]
    h, w = src.shape[:2]
    ch, cw = int(h * rs.uniform(0.4, 1.0)), int(w * rs.uniform(0.4, 1.0))
    top, left = rs.randint(0, h - ch + 1), rs.randint(0, w - cw + 1)
    side = rs.uniform(0, 1)
    out_h = int(sizes[0][0] + side * (sizes[1][0] - sizes[0][0]))
    out_w = int(out_h * 4 / 3)
    if rs.rand() < 0.3:  # some portrait images, as ImageNet has
        out_h, out_w = out_w, out_h
    gain = rs.uniform(0.7, 1.3, 3)
    im = Image.fromarray(src[top:top + ch, left:left + cw]).resize((out_w, out_h), Image.BILINEAR)
    a = np.clip(np.asarray(im, np.float32) * gain, 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path, quality=90)


PHOTOS: list[np.ndarray] = []


def build_folder(out: Path, n: int, classes: int = 100, sizes=SIZES, name: str = "jpeg") -> Path:
    """OUT/NAME/CLASS/IMAGE.jpg, made once (an existing complete folder is reused); `sizes`: the smallest and
    largest (h, w)."""
    root = out / name
    per = n // classes
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= per * classes:
        return root
    PHOTOS[:] = sample_photos()
    jobs = []
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per):
            jobs.append((root / f"c{c:03d}" / f"{i:04d}.jpg", (c * 7 + i) % len(PHOTOS), c * 100003 + i, sizes))
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_make_one, jobs, chunksize=16)
    print(f"made {len(jobs)} JPEGs in {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root


def linked_copy(src: Path, dst: Path, times: int) -> Path:
    """`times` hard links of every image of src in dst: a split `times` as long that costs no disk."""
    if dst.is_dir():
        return dst
    for f in sorted(src.rglob("*.jpg")):
        d = dst / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(times):
            os.link(f, d / f"{k}_{f.name}")
    return dst


# -- pipelines ---------------------------------------------------------------------------------------


def ours(root: Path, workers: int, batch: int, train: bool, draft: bool = True):
    opts = StreamOptions(stream="on", workers=workers, draft=draft, val_path=str(root))
    data, val = load_classification(f"folder:{root}", options=opts)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    if train:
        items = (b["x"] for b in data.train_batches(0, 0, 0, batch, 0, 1, 1))
    else:
        items = (x for x, _ in val.eval_batches(0, 1, batch))
    return (normalize(x, mean, std) for x in items)


def reference(root: Path, workers: int, batch: int, train: bool):
    from torchvision import datasets, transforms  # noqa: PLC0415

    norm = [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    t = (transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *norm]) if train
         else transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *norm]))
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), t), batch_size=batch, shuffle=train,
                                         num_workers=workers, drop_last=True)
    return (x for x, _ in loader)


def time_one(make, warmup: int, batches: int, batch: int) -> float:
    """Images per second over `batches` batches after `warmup` (a fresh loader: worker start-up excluded)."""
    it = make()
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        x = next(it)
        assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
    rate = batches * batch / (time.perf_counter() - t0)
    del it
    return rate


def tree_memory(pid: int) -> int:
    """Bytes of PSS of `pid` and its descendants (shared pages split between the processes that map them)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def peak_memory(root: Path, workers: int, batch: int, batches: int) -> tuple[int, int]:
    """(peak, before) process-tree PSS while streaming `batches` training batches of the folder."""
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], tree_memory(os.getpid()))
            time.sleep(0.2)

    before = tree_memory(os.getpid())
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    it = ours(root, workers, batch, train=True)
    for _ in range(batches):
        next(it)
    done.set()
    t.join()
    return peak[0], before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/resnetkit-jpeg", help="where the JPEG folder is made and cached")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8, help="timed batches per trial")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--memory-batches", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    root = build_folder(Path(args.out), args.n)
    n = sum(1 for _ in root.rglob("*.jpg"))
    w, b = args.workers, args.batch
    rows = {
        "train: ours (draft on)": lambda: ours(root, w, b, True),
        "train: ours (draft off)": lambda: ours(root, w, b, True, draft=False),
        "train: torchvision reference": lambda: reference(root, w, b, True),
        "eval: ours": lambda: ours(root, w, b, False),
        "eval: torchvision reference": lambda: reference(root, w, b, False),
    }
    rates: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.trials):
        for name, make in rows.items():
            rates[name].append(time_one(make, args.warmup, args.batches, b))
    print(f"\n## JPEG input pipelines: {n} images (375x500 .. 1200x1600, q90), {w} workers, batch {b}, "
          f"{args.batches} batches x {args.trials} trials (interleaved; {args.warmup} warm-up batches per trial "
          "excluded)")
    print(machine_line(1) + "; the machine was shared with other jobs: compare the ratios\n")
    print("| pipeline | img/s (mean +- std) | vs torchvision |")
    print("|---|---|---|")
    for name, r in rates.items():
        ref = statistics.fmean(rates[("train" if name.startswith("train") else "eval") + ": torchvision reference"])
        sd = statistics.stdev(r) if len(r) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(r):.1f} +- {sd:.1f} | {statistics.fmean(r) / ref:.2f}x |")
    big = linked_copy(root, Path(args.out) / "jpeg_x10", 10)
    print(f"\n| streamed split | peak PSS of the process tree ({w} workers, {args.memory_batches} batches) |")
    print("|---|---|")
    for path in (root, big):
        count = sum(1 for _ in path.rglob("*.jpg"))
        peak, before = peak_memory(path, w, b, args.memory_batches)
        print(f"| {count} images | {peak / 2**30:.2f} GiB (process alone before: {before / 2**30:.2f} GiB) |")


if __name__ == "__main__":
    main()
