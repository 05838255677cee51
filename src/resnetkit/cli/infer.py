"""`resnetkit eval`, `predict`, `segment`, `explain`: parse, call the library function, print."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from resnetkit._helpers import atomic_write_json, check_output
from resnetkit.errors import UserError
from resnetkit.export import BACKENDS, explain, predict, predict_folder, segment
from resnetkit.train import evaluate_file
from resnetkit.train.calibrate import calibrate_file
from resnetkit.train.report import plot_confusion
from resnetkit.weights import read_card

DEVICE_HELP = "cpu, cuda or cuda:N (default: the first GPU when there is one and the backend runs there)"
BACKEND_HELP = ("inference backend (default auto: the fastest that agrees >= 99.5%% with fp32, bf16 and int8 "
                "included, measured once per model and machine, then cached; small jobs run channels_last; "
                "auto-fp32: the fastest fp32 one)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a weights file: top-1/top-5 and a confusion matrix (mIoU for "
                                    "segmentation weights)")
    p.add_argument("--weights", required=True, help="a model.safetensors written by resnetkit")
    p.add_argument("--data", required=True, help="classification: a dataset spec (its test split is used); "
                                                 "segmentation: a VOC-layout or pairs folder")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="val", help="segmentation: the split to evaluate (default val)")
    p.add_argument("--tta", choices=["flip", "multiscale"], help="test-time augmentation: flip (the image and its "
                   "mirror), multiscale (segmentation: 0.75/1/1.25x and mirrors)")
    p.add_argument("--out", help="folder for eval.json, confusion_matrix.png, reliability.png and worst.png (default: "
                                 "next to the weights)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on a validation split (never the test split: the run's data.holdout, or "
                        "--calibrate-on), write OUT/model_calibrated.safetensors and evaluate it; ECE before and after")
    p.add_argument("--calibrate-on", metavar="SPEC", help="the validation data for --calibrate (its evaluation split)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify images with a weights file, using its own preprocessing")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True)
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--out", metavar="FILE.csv|FILE.jsonl",
                   help="stream rows to a CSV or JSONL file instead of printing (large folders: DataLoader "
                        "workers decode, a progress bar shows the rate)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes with --out (default 2)")
    p.add_argument("--tta", choices=["flip"], help="test-time augmentation: flip (the image and its "
                   "mirror)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("segment", help="segment images with a segmentation weights file: mask + overlay PNGs")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True, help="a model.safetensors from `resnetkit train --task segmentation`")
    p.add_argument("-o", "--out-dir", required=True, help="folder for NAME.png (palette mask) and NAME_overlay.png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_segment)
    _register_explain(sub)


def _register_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heat maps: where a classifier looked (one PNG per image)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True, help="a classification model.safetensors")
    p.add_argument("--layer", metavar="END_POINT", help="end point to explain, e.g. resnet_v2_50/block3 (default: "
                                                        "the last block; `resnetkit summary NAME` lists them)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: the top one)")
    p.add_argument("-o", "--out-dir", required=True, help="folder for NAME_cam.png")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    for r in explain(args.weights, args.inputs, args.out_dir, layer=args.layer, class_name=args.class_name,
                     alpha=args.alpha, overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite):
        print(f"{r['image']}: {r['class']} {100 * r['prob']:.1f}% at {r['layer']} -> {r['out']}")
    return 0


# -- eval ----------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.weights).parent
    seg = read_card(args.weights).task == "segmentation"
    outputs = [out / "eval_segmentation.json"] if seg else [out / n for n in ("eval.json", "confusion_matrix.png",
                                                                               "reliability.png", "worst.png")]
    if args.calibrate_on and not args.calibrate:
        raise UserError("--calibrate-on is the validation data of --calibrate; add --calibrate")
    if args.calibrate and seg:
        raise UserError("--calibrate fits a classifier's temperature; this is a segmentation weights file")
    calibrated = out / "model_calibrated.safetensors"
    for p in outputs + ([calibrated] if args.calibrate else []):  # before the (long) evaluation, not after it
        check_output(p, inputs=[args.weights, args.data], overwrite=args.overwrite)
    before = None
    if args.calibrate:
        before = evaluate_file(args.weights, args.data, data_dir=args.data_dir, backend=args.backend,
                               batch_size=args.batch_size, allow_nonfinite=args.allow_nonfinite, tta=args.tta,
                               device=args.device)["ece"]
        fit = calibrate_file(args.weights, calibrated, val=args.calibrate_on, data_dir=args.data_dir,
                             allow_nonfinite=args.allow_nonfinite)
        print(f"temperature {fit['temperature']:.4f} fitted on {fit['val']} ({fit['n']} images): NLL "
              f"{fit['nll_before']:.4f} -> {fit['nll_after']:.4f}, ECE {100 * fit['ece_before']:.2f}% -> "
              f"{100 * fit['ece_after']:.2f}%; wrote {calibrated}")
        args.weights = str(calibrated)
    result = evaluate_file(args.weights, args.data, data_dir=args.data_dir, split=args.split, backend=args.backend,
                           batch_size=args.batch_size, allow_nonfinite=args.allow_nonfinite, tta=args.tta,
                           device=args.device, figures=None if seg else out)
    names = result["class_names"]
    width = max(len(n) for n in names)
    if "miou" in result:
        path = atomic_write_json(outputs[0], result)
        print(f"{args.data} {result['split']}: {result['n']} images  mIoU {result['miou']:.4f}  pixel accuracy "
              f"{result['pixel_acc']:.4f}")
        for n, iou in result["iou"].items():
            print(f"  {n:<{width}}  IoU {iou:.4f}" if iou == iou else f"  {n:<{width}}  IoU   n/a (absent)")
        print(f"wrote {path}")
        return 0
    if before is not None:
        result = {**result, "test_ece_uncalibrated": before,
                  "calibration": read_card(args.weights).extra["calibration"]}
        print(f"test ECE {100 * before:.2f}% uncalibrated -> {100 * result['ece']:.2f}% with the temperature")
    path = atomic_write_json(outputs[0], result)
    plot_confusion(np.asarray(result["confusion_matrix"]), names, outputs[1])
    print(f"{args.data} test: {result['n']} images  top-1 {100 * result['top1']:.2f}%  "
          f"top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  balanced accuracy "
          f"{100 * result['balanced_accuracy']:.2f}%  macro-F1 {100 * result['macro_f1']:.2f}%  ECE "
          f"{100 * result['ece']:.2f}%")
    print(f"  {'class':<{width}}  precision  recall      F1  support")
    for n, r in result["per_class"].items():
        print(f"  {n:<{width}}  {100 * r['precision']:8.2f}% {100 * r['recall']:6.2f}% {100 * r['f1']:6.2f}% "
              f"{r['support']:8d}")
    print(f"wrote {path}, {', '.join(str(p) for p in outputs[1:])}")
    return 0


# -- predict -------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    if read_card(args.weights).task == "segmentation":
        raise UserError(f"{args.weights} holds a segmentation model; use `resnetkit segment IMAGE... --weights "
                        f"{args.weights} -o DIR`")
    if args.out:
        r = predict_folder(args.weights, args.inputs, args.out, backend=args.backend, top_k=args.top_k,
                           workers=args.workers, progress=sys.stderr.isatty(), overwrite=args.overwrite,
                           allow_nonfinite=args.allow_nonfinite, tta=args.tta, device=args.device)
        print(f"wrote {r['images']} rows to {r['out']} ({r['failed']} unreadable)")
        return 0
    rows = predict(args.weights, args.inputs, top_k=args.top_k, backend=args.backend,
                   allow_nonfinite=args.allow_nonfinite, tta=args.tta, device=args.device)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["image", "rank", "class", "index", "prob"])
        for r in rows:
            for rank, p in enumerate(r["predictions"], 1):
                w.writerow([r["image"], rank, p["class"], p["index"], f"{p['prob']:.6f}"])
    else:
        width = max(len(r["image"]) for r in rows)
        for r in rows:
            preds = "  ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in r["predictions"])
            print(f"{r['image']:<{width}}  {preds}")
    return 0


# -- segment -------------------------------------------------------------------------------


def cmd_segment(args: argparse.Namespace) -> int:
    if read_card(args.weights).task != "segmentation":
        raise UserError(f"{args.weights} holds a classification model; use `resnetkit predict`, or train a "
                        "segmentation model with `resnetkit train --task segmentation`")
    for r in segment(args.weights, args.inputs, args.out_dir, alpha=args.alpha, overwrite=args.overwrite,
                     allow_nonfinite=args.allow_nonfinite, backend=args.backend, device=args.device):
        present = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["fractions"].items())
        print(f"{r['image']}: {present} -> {r['mask']}, {r['overlay']}")
    return 0
