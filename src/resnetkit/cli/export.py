"""`resnetkit export` and `resnetkit bench`: thin wrappers over resnetkit.export and resnetkit.bench."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torchvision

from resnetkit._helpers import atomic_write_json, check_output
from resnetkit.bench import bench_backends, format_table, machine_info
from resnetkit.cli.models import parse_size as _size
from resnetkit.errors import UserError
from resnetkit.export import BACKENDS, quantize
from resnetkit.export.backends import unsupported
from resnetkit.export.formats import DEFAULT_OPSET, export_file
from resnetkit.export.ort import require_onnxruntime
from resnetkit.models import create_model
from resnetkit.weights import input_shape, load

log = logging.getLogger(__name__)

DEFAULT_BENCH_BACKENDS = "eager,auto,auto-fp32"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a weights file to ONNX, TorchScript or a torch.export program")
    p.add_argument("--weights", required=True, help="a model.safetensors written by resnetkit")
    p.add_argument("--format", default="onnx", help="onnx (default), torchscript or exported-program")
    p.add_argument("-o", "--out", help="output file (default: beside the weights, model.onnx / .torchscript.pt / .pt2)")
    p.add_argument("--input", type=_size, metavar="H[xW]", help="example input size (default: the model's own)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="dynamic H and W for a classifier too (always on for fully convolutional models)")
    p.add_argument("--no-fold", action="store_true", help="keep batch norms (default: fold them into the convs)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: compute in bf16 behind fp32 inputs and outputs (exported-program, torchscript; "
                        "ONNX Runtime's CPU provider cannot run bf16 convolutions, so not ONNX)")
    p.add_argument("--int8", action="store_true", help="ONNX only: also write an int8 model (static, QDQ, per channel)")
    p.add_argument("--calib-data", metavar="DATASET", help="dataset whose training images calibrate --int8 "
                   "(fashion_mnist, cifar10, folder:PATH, ...)")
    p.add_argument("--calib-n", type=int, default=512, metavar="N", help="calibration images (default 512)")
    p.add_argument("--eval-n", type=int, default=0, metavar="N",
                   help="with --int8: top-1 of fp32 and int8 on the first N test images of --calib-data (0: skip)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="inference throughput and latency of a model under several backends")
    p.add_argument("--model", help="registered model name (random weights), e.g. resnet50")
    p.add_argument("--weights", help="a weights file instead of --model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=_size, metavar="H[xW]", help="input size (default: the model's own)")
    p.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime (default: torch's)")
    p.add_argument("--backend", default=DEFAULT_BENCH_BACKENDS,
                   help=f"comma-separated, from: {', '.join(BACKENDS)} (default {DEFAULT_BENCH_BACKENDS}: "
                        "eager, what auto picks and what auto-fp32 picks)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per backend (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the machine description as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_bench)


# -- export --------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    if args.int8 and args.format != "onnx":
        raise UserError("--int8 needs --format onnx (int8 models are quantised with ONNX Runtime)")
    if args.int8 and not args.calib_data:
        raise UserError("--int8 needs --calib-data DATASET (training images to calibrate on)")
    if args.int8 and (args.calib_n < 1 or args.eval_n < 0):  # checked before the export, not after it
        raise UserError(f"--calib-n {args.calib_n} must be at least 1 and --eval-n {args.eval_n} at least 0")
    result = export_file(args.weights, args.out, args.format, input_size=args.input, fold_bn=not args.no_fold,
                         dynamic_size=args.dynamic_size or None,
                         opset=args.opset if args.opset is not None else DEFAULT_OPSET, overwrite=args.overwrite,
                         allow_nonfinite=args.allow_nonfinite, dtype=args.dtype)
    out = result["path"]
    worst = max((c["rel"] for c in result["checks"]), default=0.0)
    shapes = ", ".join("x".join(map(str, c["input"])) for c in result["checks"])
    dims = "batch, H, W" if result["dynamic_size"] else "batch"
    print(f"wrote {out} ({args.format}, {args.dtype}, dynamic {dims}); checked against fp32 eager on {shapes}: "
          f"max relative error {worst:.2g}")
    if args.int8:
        _export_int8(args, load(args.weights, allow_nonfinite=args.allow_nonfinite), out)
    return 0


def _export_int8(args: argparse.Namespace, model, fp32_path: Path) -> None:
    r = quantize(model, fp32_path, args.calib_data, calib_n=args.calib_n, eval_n=args.eval_n, data_dir=args.data_dir,
                 overwrite=args.overwrite)
    print(f"wrote {r['path']} (int8: static QDQ, per-channel weights, {r['calib_n']} calibration images "
          f"from {args.calib_data})")
    if args.eval_n:
        print(f"{args.calib_data} test, first {r['n']} images: top-1 fp32 {100 * r['top1_fp32']:.2f}%  "
              f"int8 {100 * r['top1_int8']:.2f}%  ({100 * (r['top1_int8'] - r['top1_fp32']):+.2f} points); "
              f"int8 agrees with fp32 on {100 * r['agreement']:.2f}%")


# -- bench ---------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.weights):
        raise UserError("give exactly one of --model NAME or --weights FILE")
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UserError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    if any(b.startswith("onnxruntime") for b in backends):
        require_onnxruntime()
    for b in backends:  # refuse before building anything
        if (why := unsupported(b)) is not None:
            raise UserError(why)
    if args.batch < 1 or args.iters < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise UserError("--batch, --iters and --threads must be at least 1, --warmup at least 0")
    if args.json:
        check_output(args.json, overwrite=args.overwrite)
    if args.weights:
        model = load(args.weights)
        name = model.config.arch
    else:
        model, name = create_model(args.model).eval(), args.model
    in_chans, *size = input_shape(model, args.input)
    size = tuple(size)
    reference = {}
    if name == "resnet50":
        reference["torchvision resnet50"] = torchvision.models.resnet50()
    info = machine_info(args.threads)
    print(f"{name}  batch {args.batch}  input {in_chans}x{size[0]}x{size[1]}  fp32")
    print(f"cpu: {info['cpu']} ({info['cores']} cores)  threads: {info['threads']}  torch {info['torch']}  "
          f"onnxruntime {info['onnxruntime']}")
    rows = bench_backends(model, backends, batch=args.batch, input_size=size, in_chans=in_chans,
                          threads=args.threads, iters=args.iters, warmup=args.warmup, reference=reference)
    baseline = next(iter(reference), None)
    print(format_table(rows, baseline=f"{baseline} (eager)" if baseline else "eager"))
    print("img/s = batch / median call time; setup (fold/export/quantise; for auto: measuring its candidates) "
          "and the first call (compilation) are excluded from the timings")
    if "onnxruntime-int8" in backends or "int8" in backends:
        print("int8 was calibrated on random images: its speed is real, its accuracy is not "
              "(use `resnetkit export --int8 --calib-data ... --eval-n N` for that)")
    if args.json:
        atomic_write_json(args.json, dict(model=name, batch=args.batch, input=size, machine=info, rows=rows))
    return 0
