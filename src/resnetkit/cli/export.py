"""`resnetkit export` and `resnetkit bench`: thin wrappers over resnetkit.export and resnetkit.bench."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from resnetkit.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_BENCH_BACKENDS = "eager,channels_last,onnxruntime"


def _size(text: str) -> tuple[int, int]:
    from resnetkit.cli.models import parse_size

    return parse_size(text)


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
    p.add_argument("--int8", action="store_true", help="ONNX only: also write an int8 model (static, QDQ, per channel)")
    p.add_argument("--calib-data", metavar="DATASET", help="dataset whose training images calibrate --int8 "
                   "(fashion_mnist, cifar10, folder:PATH, ...)")
    p.add_argument("--calib-n", type=int, default=512, metavar="N", help="calibration images (default 512)")
    p.add_argument("--eval-n", type=int, default=0, metavar="N",
                   help="with --int8: top-1 of fp32 and int8 on the first N test images of --calib-data (0: skip)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="inference throughput and latency of a model under several backends")
    p.add_argument("--model", help="registered model name (random weights), e.g. resnet50")
    p.add_argument("--weights", help="a weights file instead of --model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=_size, metavar="H[xW]", help="input size (default: the model's own)")
    p.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime (default: torch's)")
    p.add_argument("--backend", default=DEFAULT_BENCH_BACKENDS,
                   help=f"comma-separated: eager, channels_last, compile, onnxruntime, onnxruntime-int8 "
                        f"(default {DEFAULT_BENCH_BACKENDS})")
    p.add_argument("--iters", type=int, default=20, help="timed calls per backend (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the machine description as JSON")
    p.set_defaults(func=cmd_bench)


# -- export --------------------------------------------------------------------------------


def _input_size(model, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return size
    pre = getattr(model, "preprocessing", None) or {}
    if pre.get("size"):
        return tuple(pre["size"])
    from resnetkit.models import model_defaults

    s = model_defaults(model.config.arch)["input_size"]
    return (s, s)


def _in_chans(model) -> int:
    conv = model.conv1 if not hasattr(model.conv1, "conv") else model.conv1.conv
    return conv.in_channels


def cmd_export(args: argparse.Namespace) -> int:
    from resnetkit.export import prepare_for_inference
    from resnetkit.export.formats import DEFAULT_OPSET, FORMATS, default_output, export_model
    from resnetkit.weights.io import load

    if args.format not in FORMATS:
        raise UserError(f"unknown export format {args.format!r}; choose one of {', '.join(FORMATS)}")
    if args.int8 and args.format != "onnx":
        raise UserError("--int8 needs --format onnx (int8 models are quantised with ONNX Runtime)")
    if args.int8 and not args.calib_data:
        raise UserError("--int8 needs --calib-data DATASET (training images to calibrate on)")
    if args.format == "onnx":
        from resnetkit.export.backends import require_onnxruntime

        require_onnxruntime()  # fail before the (slow) export, with the install hint
    model = load(args.weights)
    size, in_chans = _input_size(model, args.input), _in_chans(model)
    out = Path(args.out) if args.out else default_output(args.weights, args.format)
    net = model if args.no_fold else prepare_for_inference(model, channels_last=False)
    result = export_model(net, out, args.format, input_size=size, in_chans=in_chans,
                          opset=args.opset or DEFAULT_OPSET, dynamic_size=args.dynamic_size or None,
                          reference=model)
    worst = max((c["rel"] for c in result["checks"]), default=0.0)
    shapes = ", ".join("x".join(map(str, c["input"])) for c in result["checks"])
    dims = "batch, H, W" if result["dynamic_size"] else "batch"
    print(f"wrote {out} ({args.format}, dynamic {dims}); checked against eager on {shapes}: "
          f"max relative error {worst:.2g}")
    if args.int8:
        _export_int8(args, model, out, size)
    return 0


def _export_int8(args: argparse.Namespace, model, fp32_path: Path, size: tuple[int, int]) -> None:
    import torch

    from resnetkit.export.backends import OrtBackend, ort_session
    from resnetkit.export.quantize import calibration_images, quantize_onnx

    calib = calibration_images(args.calib_data, model.preprocessing, n=args.calib_n, data_dir=args.data_dir)
    if tuple(calib.shape[2:]) != tuple(size):
        raise UserError(f"{args.calib_data} images are {tuple(calib.shape[2:])}, the model takes {size}")
    qpath = fp32_path.with_name(fp32_path.name.removesuffix(".onnx") + ".int8.onnx")
    quantize_onnx(fp32_path, qpath, calib)
    print(f"wrote {qpath} (int8: static QDQ, per-channel weights, {len(calib)} calibration images "
          f"from {args.calib_data})")
    if args.eval_n:
        from resnetkit.data import load_dataset, normalize

        _, test = load_dataset(args.calib_data, args.data_dir, image_size=size[0], channels=_in_chans(model))
        pre = model.preprocessing or {}
        mean, std = torch.tensor(pre.get("mean") or test.mean), torch.tensor(pre.get("std") or test.std)
        preds = {"fp32": [], "int8": []}
        for name, p in (("fp32", fp32_path), ("int8", qpath)):
            run = OrtBackend(name, ort_session(p), 0.0)
            for i in range(0, min(args.eval_n, len(test)), 256):
                x = normalize(test.images[i:min(i + 256, args.eval_n)], mean, std)
                preds[name].append(run(x).argmax(1))
        fp32, int8 = torch.cat(preds["fp32"]), torch.cat(preds["int8"])
        labels = test.labels[:len(fp32)]
        acc = {k: float((v == labels).float().mean()) for k, v in (("fp32", fp32), ("int8", int8))}
        print(f"{args.calib_data} test, first {len(fp32)} images: top-1 fp32 {100 * acc['fp32']:.2f}%  "
              f"int8 {100 * acc['int8']:.2f}%  ({100 * (acc['int8'] - acc['fp32']):+.2f} points); "
              f"int8 agrees with fp32 on {100 * float((fp32 == int8).float().mean()):.2f}%")


# -- bench ---------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from resnetkit.bench import bench_backends, format_table, machine_info
    from resnetkit.export.backends import BACKENDS

    if bool(args.model) == bool(args.weights):
        raise UserError("give exactly one of --model NAME or --weights FILE")
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UserError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    if any(b.startswith("onnxruntime") for b in backends):
        from resnetkit.export.backends import require_onnxruntime

        require_onnxruntime()
    if args.batch < 1 or args.iters < 1:
        raise UserError("--batch and --iters must be at least 1")
    if args.weights:
        from resnetkit.weights.io import load

        model = load(args.weights)
        name = model.config.arch
    else:
        from resnetkit.models import create_model

        model, name = create_model(args.model).eval(), args.model
    size = _input_size(model, args.input)
    reference = {}
    if name == "resnet50":
        import torchvision

        reference["torchvision resnet50"] = torchvision.models.resnet50()
    info = machine_info(args.threads)
    print(f"{name}  batch {args.batch}  input {_in_chans(model)}x{size[0]}x{size[1]}  fp32")
    print(f"cpu: {info['cpu']} ({info['cores']} cores)  threads: {info['threads']}  torch {info['torch']}  "
          f"onnxruntime {info['onnxruntime']}")
    rows = bench_backends(model, backends, batch=args.batch, input_size=size, in_chans=_in_chans(model),
                          threads=args.threads, iters=args.iters, warmup=args.warmup, reference=reference)
    baseline = next(iter(reference), None)
    print(format_table(rows, baseline=f"{baseline} (eager)" if baseline else "eager"))
    print("img/s = batch / median call time; setup (fold/export/quantise) and the first call "
          "(compilation) are excluded from the timings")
    if "onnxruntime-int8" in backends:
        print("onnxruntime-int8 was calibrated on random images: its speed is real, its accuracy is not "
              "(use `resnetkit export --int8 --calib-data ... --eval-n N` for that)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(model=name, batch=args.batch, input=size, machine=info,
                                                   rows=rows), indent=2) + "\n")
    return 0
