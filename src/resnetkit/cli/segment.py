"""`resnetkit segment` and `resnetkit data make-shapes`, plus the segmentation side of `train` / `eval`.

`train --task segmentation` and `eval` on a segmentation weights file land in `cmd_train_segmentation`
and `cmd_eval_segmentation` (cli/train.py dispatches); `add_train_arguments` / `add_eval_arguments` add
the segmentation flags to those parsers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnetkit.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images with a segmentation weights file: mask + overlay PNGs")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True, help="a model.safetensors from `resnetkit train --task segmentation`")
    p.add_argument("-o", "--out-dir", required=True, help="folder for NAME.png (palette mask) and NAME_overlay.png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("data", help="make datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = dsub.add_parser("make-shapes", help="write a synthetic VOC-layout segmentation set of coloured shapes")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--n-train", type=int, default=1000)
    q.add_argument("--n-val", type=int, default=200)
    q.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_make_shapes)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Segmentation-only flags of `resnetkit train` (used with --task segmentation)."""
    g = p.add_argument_group("segmentation (--task segmentation)")
    g.add_argument("--head", choices=["slim", "aspp"], help="slim: 1x1 logits; aspp: DeepLabv3 (default slim)")
    g.add_argument("--output-stride", type=int, choices=[4, 8, 16, 32], help="backbone output stride (default 16)")
    g.add_argument("--backbone-weights", metavar="FILE", help="classification model.safetensors for the backbone")
    g.add_argument("--freeze-bn", action="store_true", default=None,
                   help="keep the backbone's BatchNorm statistics frozen (small-batch fine-tuning)")
    g.add_argument("--crop-size", type=int, help="training crop, ideally 32k+1 (default 321)")
    g.add_argument("--min-scale", type=float, help="random scale range (default 0.5 .. 2.0)")
    g.add_argument("--max-scale", type=float)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="val", help="segmentation: the split to evaluate (default val)")


# -- train / eval --------------------------------------------------------------------------

FLAGS = {"model": "model.backbone", "head": "model.head", "output_stride": "model.output_stride",
         "backbone_weights": "model.backbone_weights", "freeze_bn": "model.freeze_bn", "data": "data.path",
         "batch_size": "data.batch_size", "subset": "data.subset", "crop_size": "data.crop_size",
         "min_scale": "data.min_scale", "max_scale": "data.max_scale", "lr": "optim.lr",
         "epochs": "schedule.epochs", "budget_min": "schedule.budget_min", "out": "run.out", "seed": "run.seed",
         "deterministic": "run.deterministic", "amp": "run.amp"}


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from resnetkit.segmentation.train import SegTrainConfig, resolve, train_segmentation
    from resnetkit.train.config import apply_nested

    for flag in ("compile", "channels_last", "data_dir"):
        if getattr(args, flag, None):
            raise UserError(f"--{flag.replace('_', '-')} is not supported with --task segmentation")
    if getattr(args, "resume", False):
        cfg = apply_nested(SegTrainConfig(), {"run": {"out": args.out or SegTrainConfig().run.out}})
        return train_segmentation(cfg, resume=True)["exit_code"]
    flags = {dotted: getattr(args, name, None) for name, dotted in FLAGS.items()}
    if flags["schedule.budget_min"] is not None:
        flags["schedule.epochs"] = 0.0
    cfg = resolve(getattr(args, "config", None), getattr(args, "set", []) or [], flags)
    return train_segmentation(cfg)["exit_code"]


def is_segmentation_weights(path: str) -> bool:
    """True when a weights file holds a segmentation model (cheap: reads the metadata only)."""
    from resnetkit.segmentation.models import ARCH
    from resnetkit.weights.io import read_metadata

    return (read_metadata(path)["config"] or {}).get("arch") == ARCH


def _load_segmentation(path: str):
    from resnetkit.weights.io import load

    if not is_segmentation_weights(path):
        raise UserError(f"{path}: a classification model; use `resnetkit predict`, or train one with "
                        "`resnetkit train --task segmentation`")
    model = load(path)
    pre = model.preprocessing or {}
    if not pre.get("mean") or not pre.get("std"):
        raise UserError(f"{path}: no mean/std in its preprocessing metadata")
    return model, pre


def cmd_eval_segmentation(args: argparse.Namespace) -> int:
    from resnetkit.segmentation.data import load_split
    from resnetkit.segmentation.infer import evaluate_split

    model, pre = _load_segmentation(args.weights)
    data = load_split(args.data, getattr(args, "split", None) or "val")
    names = model.class_names or data.class_names
    if len(names) != data.num_classes or model.num_classes != data.num_classes:
        raise UserError(f"{args.weights} predicts {model.num_classes} classes but {args.data} has "
                        f"{data.num_classes} ({', '.join(data.class_names)})")
    ev = evaluate_split(model, data, pre["mean"], pre["std"], batch_size=min(getattr(args, "batch_size", 16), 64))
    out = Path(args.out) if getattr(args, "out", None) else Path(args.weights).parent
    out.mkdir(parents=True, exist_ok=True)
    result = {"weights": str(args.weights), "data": str(args.data), "split": data.info["split"], "n": ev["n"],
              "miou": ev["miou"], "pixel_acc": ev["pixel_acc"], "iou": dict(zip(names, ev["iou"])),
              "confusion_matrix": ev["confusion"].tolist(), "class_names": names}
    (out / "eval_segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.data} {result['split']}: {ev['n']} images  mIoU {ev['miou']:.4f}  pixel accuracy "
          f"{ev['pixel_acc']:.4f}")
    width = max(len(n) for n in names)
    for n, iou in zip(names, ev["iou"]):
        print(f"  {n:<{width}}  IoU {iou:.4f}" if iou == iou else f"  {n:<{width}}  IoU   n/a (absent)")
    print(f"wrote {out / 'eval_segmentation.json'}")
    return 0


# -- segment -------------------------------------------------------------------------------


def cmd_segment(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from resnetkit.data.folder import collect_images
    from resnetkit.segmentation.data import normalize_one, read_image
    from resnetkit.segmentation.infer import atomic_save, overlay, palette_png, predict_logits

    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha {args.alpha}: choose a value in [0, 1]")
    model, pre = _load_segmentation(args.weights)
    mean, std = torch.tensor(pre["mean"], dtype=torch.float32), torch.tensor(pre["std"], dtype=torch.float32)
    out = Path(args.out_dir)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    for f in collect_images(args.inputs):
        im = read_image(f)  # (3, H, W) uint8
        mask = predict_logits(model, normalize_one(im, mean, std)[None]).argmax(1)[0].to(torch.uint8).numpy()
        atomic_save(palette_png(mask), out / f"{f.stem}.png")
        atomic_save(Image.fromarray(overlay(im.permute(1, 2, 0).numpy(), mask, args.alpha)),
                    out / f"{f.stem}_overlay.png")
        counts = torch.bincount(torch.from_numpy(mask).flatten().long(), minlength=len(names))
        present = ", ".join(f"{names[k]} {100 * int(c) / mask.size:.1f}%" for k, c in enumerate(counts.tolist()) if c)
        print(f"{f}: {present} -> {out / (f.stem + '.png')}")
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from resnetkit.segmentation.shapes import SHAPE_CLASSES, make_shapes

    root = make_shapes(args.dir, args.n_train, args.n_val, args.size, args.seed)
    print(f"wrote {args.n_train} train + {args.n_val} val images ({args.size}x{args.size}, classes: "
          f"{', '.join(SHAPE_CLASSES)}) to {root}")
    return 0
