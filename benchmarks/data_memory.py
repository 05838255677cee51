"""Memory and wall time of a short fine-tuning run on an image folder: data.stream auto, off (in memory), on.

The data: 10,000 JPEG photos (375x500 .. 480x640, q90) in 5 class folders, made from the sample photographs
as benchmarks/data_pipeline.py makes them, once, in --out; the 500- and 3,000-photo folders are hard-linked
subsets of it (the first photos of each class). Each row is one run of the command a new user types
(issue 25), in a fresh process, its evaluation bounded to 300 images (all of them up to 3,000 photos; it
keeps the 10,000-photo runs short and the evaluation batch, most of the streamed peak, the same size):

    resnetkit train --data folder:PHOTOS --model resnet18 --set data.image_size=224 \\
        --set schedule.steps=4 --batch-size 8 --stream MODE --set data.eval_subset=300

Figures: peak PSS of the process tree (the CLI and its DataLoader workers; sampled every 0.1 s; shared pages
count once), the largest process's max RSS (what /usr/bin/time reports), wall time, and what
data.stream=auto chose and why (its log line). One trial per row: memory does not vary run to run, wall
time does (the machine may be shared: compare within one table).

    flock /tmp/resnetkit-bench.lock .venv/bin/python benchmarks/data_memory.py [--out /tmp/rk-photos]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from data_pipeline import build_folder, tree_memory  # noqa: E402

PHOTO_SIZES = ((375, 500), (480, 640))  # (h, w), smallest and largest, as in issue 25
CLASSES = 5


def linked_subset(src: Path, dst: Path, per_class: int) -> Path:
    """The first `per_class` photos of each class of src, hard-linked into dst."""
    if dst.is_dir():
        return dst
    for c in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / c.name).mkdir(parents=True)
        for f in sorted(c.glob("*.jpg"))[:per_class]:
            os.link(f, dst / c.name / f.name)
    return dst


def run(photos: Path, mode: str, args: argparse.Namespace) -> dict:
    """One training run in a fresh process: peak tree PSS, max RSS of its largest process, wall s, log line."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "resnetkit", "train", "--data", f"folder:{photos}", "--model", "resnet18",
               "--set", f"data.image_size={args.image_size}", "--set", f"schedule.steps={args.steps}",
               "--set", f"data.eval_subset={args.eval_subset}", "--batch-size", str(args.batch), "--stream", mode,
               "--out", str(Path(out) / "run")]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak, done = [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], tree_memory(proc.pid))
                time.sleep(0.1)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        t.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    line = next((m.group(1) for m in re.finditer(r"data: \d+ images in \S+ (.*)", err)), "?")
    return {"peak": peak[0], "maxrss": usage.ru_maxrss * 1024, "wall": wall, "line": line}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/resnetkit-photos", help="where the photo folders are made and cached")
    ap.add_argument("--counts", default="500,3000,10000")
    ap.add_argument("--modes", default="auto,off,on")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-subset", type=int, default=300,
                    help="evaluate the first N images of the 10%% split (300: all of it up to 3,000 photos)")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    full = build_folder(Path(args.out), max(counts), CLASSES, PHOTO_SIZES, name="photos")
    rows = []
    for n in counts:
        photos = full if n == max(counts) else linked_subset(full, Path(args.out) / f"photos_{n}", n // CLASSES)
        for mode in args.modes.split(","):
            r = run(photos, mode, args)
            rows.append((n, mode, r))
            print(f"{n} {mode}: {r['peak'] / 2**30:.2f} GiB PSS, {r['maxrss'] / 2**30:.2f} GiB max RSS, "
                  f"{r['wall']:.0f} s; {r['line']}", file=sys.stderr, flush=True)
    print(f"\n## A short fine-tuning run on a photo folder: memory and time by data.stream (resnet18, "
          f"{args.image_size} px, {args.steps} steps of {args.batch}; then the first {args.eval_subset} images of "
          "the 10% evaluation split)")
    print(machine_line() + "; one trial per row\n")
    print("| photos | data.stream | peak PSS, process tree | max RSS, largest process | wall | held / streamed |")
    print("|---|---|---|---|---|---|")
    for n, mode, r in rows:
        chose = "in memory" if "held in memory" in r["line"] else "streamed"
        print(f"| {n:,} | {mode} | {r['peak'] / 2**30:.2f} GiB | {r['maxrss'] / 2**30:.2f} GiB | {r['wall']:.0f} s "
              f"| {chose} |")
    for mode in ("off", "on"):
        # Between folders whose evaluation is the same size (its batch's activations are most of the peak).
        ends = [(n, r["peak"]) for n, m, r in rows if m == mode and n // 10 >= args.eval_subset]
        if len(ends) > 1:
            (n0, p0), (n1, p1) = ends[0], ends[-1]
            print(f"\n{mode}: {(p1 - p0) / (n1 - n0) / 1024:,.0f} KiB more peak PSS per photo from {n0:,} to {n1:,} "
                  f"photos, same evaluation (decoded at {args.image_size} px: {3 * args.image_size ** 2 / 1024:,.0f} "
                  "KiB)")
    print("\ndata.stream=auto's log lines:")
    for n, mode, r in rows:
        if mode == "auto":
            print(f"  {n:,}: {r['line']}")


if __name__ == "__main__":
    main()
