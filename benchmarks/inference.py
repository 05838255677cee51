"""CPU inference speed of ResNet-50 (fp32 and int8): torchvision, ours, torch.compile and ONNX Runtime.

    python benchmarks/inference.py                       # batch 16, 224x224, 2 threads, the full table
    python benchmarks/inference.py --quick               # resnet20 at 32x32: a smoke test of the script
    python benchmarks/inference.py --ort-study           # also ONNX Runtime per graph optimisation level

Rows (random weights: speed does not depend on the values):
  torchvision eager / channels_last         torchvision.models.resnet50 as it is, and channels-last
  ours eager / channels_last / compile      resnetkit resnet50: as built; BNs folded + channels-last;
                                            that + torch.compile (inductor)
  onnxruntime torchvision export            torchvision's model through torch.onnx, ORT level ALL
  onnxruntime ours (folded)                 ours, folded, same export and session options
  onnxruntime ours int8                     that, statically quantised (QDQ, per channel; calibrated on
                                            random images here: the speed is what this row measures)
Then batch-1 latency for the main paths. Setup (folding, export, quantisation) and the first call
(compilation) are reported apart from the timed calls; the machine, versions and threads are printed.
The rows are timed round-robin (--rounds), so that a shared machine's drifting load hits them all alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from resnetkit.bench import format_table, machine_info, time_fn
from resnetkit.bench.timing import summarize
from resnetkit.export.backends import OrtBackend, make_backend
from resnetkit.export.formats import export_model
from resnetkit.export.ort import ort_session
from resnetkit.models import create_model


def ort_on(model, size, threads, workdir: Path, name: str, level: str = "all") -> OrtBackend:
    t0 = time.perf_counter()
    path = workdir / f"{name}.onnx"
    if not path.exists():
        export_model(model, path, "onnx", input_size=(size, size))
    return OrtBackend(name, ort_session(path, threads=threads, level=level), time.perf_counter() - t0, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=12, help="timed calls per row, over all rounds")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes over the rows (default 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--latency-iters", type=int, default=20, help="timed calls per batch-1 row")
    p.add_argument("--skip", default="", help="comma-separated row names to leave out (e.g. 'ours compile')")
    p.add_argument("--ort-study", action="store_true", help="add ONNX Runtime rows per graph optimisation level")
    p.add_argument("--quick", action="store_true", help="resnet20 at 32x32, few iterations: a smoke test")
    p.add_argument("--json", help="write the rows and the machine description here")
    args = p.parse_args(argv)
    if args.quick:
        args.input, args.iters, args.warmup, args.latency_iters, args.rounds = 32, 4, 1, 3, 2
    torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    name = "resnet20" if args.quick else "resnet50"
    ours = create_model(name).eval()
    tv = (torchvision.models.resnet50() if not args.quick else create_model("resnet20")).eval()
    x = torch.randn(args.batch, 3, args.input, args.input, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(32, 3, args.input, args.input, generator=torch.Generator().manual_seed(1))
    work = Path(tempfile.mkdtemp(prefix="resnetkit-bench-"))
    info = machine_info(args.threads)
    print(f"{name}  batch {args.batch}  {args.input}x{args.input}  fp32 unless marked  threads {args.threads}")
    print(f"cpu: {info['cpu']} ({info['cores']} cores)  torch {info['torch']}  onnxruntime {info['onnxruntime']}")
    print(f"command: python {' '.join(sys.argv)}", flush=True)

    def tv_cl():
        m = copy.deepcopy(tv).to(memory_format=torch.channels_last)
        return lambda t: m(t.contiguous(memory_format=torch.channels_last))

    builders = {
        "torchvision eager": lambda: tv,
        "torchvision channels_last": tv_cl,
        "ours eager": lambda: make_backend("eager", ours),
        "ours folded+channels_last": lambda: make_backend("channels_last", ours, example=x[:2]),
        "ours compile (folded+channels_last)": lambda: make_backend("compile", ours, example=x[:2]),
        "onnxruntime torchvision export": lambda: ort_on(tv, args.input, args.threads, work, "ort_tv"),
        "onnxruntime ours (folded)": lambda: make_backend("onnxruntime", ours, example=x[:2], threads=args.threads,
                                                          workdir=work),
        "onnxruntime ours int8": lambda: make_backend("onnxruntime-int8", ours, example=x[:2], threads=args.threads,
                                                      calib=calib, workdir=work / "int8"),
    }
    if args.ort_study:
        # On the UNfolded export: ONNX Runtime's own basic level folds Conv+BN, 'extended' fuses Conv+ReLU
        # (FusedConv), 'all' adds the NCHWc blocked layout (Conv with fused Add+ReLU, Reorder nodes).
        for level in ("disable", "basic", "extended", "all"):
            builders[f"onnxruntime ours unfolded, level {level}"] = (
                lambda level=level: ort_on(ours, args.input, args.threads, work, "model_unfolded", level))
    (work / "int8").mkdir()

    fns, setup, first, times = {}, {}, {}, {}
    for row_name, build in builders.items():
        if row_name in skip:
            continue
        t0 = time.perf_counter()
        fns[row_name] = build()
        setup[row_name] = getattr(fns[row_name], "setup_s", time.perf_counter() - t0)
        r = time_fn(fns[row_name], x, iters=1, warmup=args.warmup)
        first[row_name], times[row_name] = r["first_s"], []
        print(f"  built {row_name} ({setup[row_name]:.1f} s, first call {r['first_s']:.1f} s)", flush=True)
    # Interleave the rows (round-robin, `--rounds` times): on a shared machine the load drifts over minutes,
    # and timing each row in one stretch would charge that drift to whichever row ran then.
    per_round = max(1, -(-args.iters // args.rounds))
    for k in range(args.rounds):
        for row_name, fn in fns.items():
            times[row_name] += time_fn(fn, x, iters=per_round, warmup=0)["times"]
        print(f"  round {k + 1}/{args.rounds}: " + ", ".join(
            f"{n} {args.batch / summarize(t)['median_s']:.1f}" for n, t in times.items()), flush=True)
    rows = []
    for row_name, t in times.items():
        r = summarize(t)
        rows.append(dict(backend=row_name, setup_s=setup[row_name], first_s=first[row_name],
                         img_s=args.batch / r["median_s"], median_ms=1e3 * r["median_s"], p90_ms=1e3 * r["p90_s"],
                         mean_ms=1e3 * r["mean_s"], std_ms=1e3 * r["std_s"], n=r["n"]))
    print()
    print(format_table(rows, baseline="torchvision eager"))

    # Batch-1 latency of the main paths (the same backends, already built and warm).
    lat_rows = []
    x1 = x[:1]
    for row_name in ("torchvision eager", "ours folded+channels_last", "ours compile (folded+channels_last)",
                     "onnxruntime torchvision export", "onnxruntime ours (folded)", "onnxruntime ours int8"):
        if row_name not in fns:
            continue
        r = time_fn(fns[row_name], x1, iters=args.latency_iters, warmup=args.warmup)
        lat_rows.append(dict(backend=row_name, setup_s=0.0, first_s=r["first_s"], img_s=1 / r["median_s"],
                             median_ms=1e3 * r["median_s"], p90_ms=1e3 * r["p90_s"], mean_ms=1e3 * r["mean_s"],
                             std_ms=1e3 * r["std_s"], n=r["n"]))
    print("\nbatch 1 latency")
    print(format_table(lat_rows, baseline="torchvision eager"))

    speed = {r["backend"]: r["img_s"] for r in rows}
    fp32 = {k: v for k, v in speed.items() if k.startswith(("ours", "onnxruntime ours (folded)")) and "int8" not in k
            and "level" not in k}
    if fp32:
        best_name, best = max(fp32.items(), key=lambda kv: kv[1])
        print(f"\nbest fp32 path: {best_name} {best:.2f} img/s")
        for ref, target in (("torchvision eager", 2.0), ("onnxruntime torchvision export", 1.0)):
            if ref in speed:
                print(f"  vs {ref}: {best / speed[ref]:.2f}x (target >= {target}x)")
        if "onnxruntime ours int8" in speed:
            print(f"  int8 vs best fp32: {speed['onnxruntime ours int8'] / best:.2f}x (target >= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(model=name, batch=args.batch, input=args.input, machine=info,
                                                   rows=rows, latency_rows=lat_rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
