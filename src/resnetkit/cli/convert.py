"""`resnetkit convert`: TF-slim / torchvision / Keras / timm weights -> our self-describing safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetkit.convert import convert_file
from resnetkit.errors import UserError
from resnetkit.weights import PRESETS, read_card


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert TF-slim, torchvision, Keras or timm weights to a resnetkit "
                                       ".safetensors",
                       description="Convert a TF-slim checkpoint (prefix, .index, V1 .ckpt, folder or .tar.gz), a "
                                   "torchvision .pth, Keras ResNetV2 .h5 or timm (.safetensors or .pth, with --from "
                                   "timm) weights into one file that `resnetkit predict` and resnetkit.load() read: "
                                   "tensors, architecture, class names and preprocessing. The source kind is "
                                   "detected from the file's bytes (timm's must be named).")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    p.add_argument("--from", dest="kind", choices=["tf-slim", "torchvision", "keras", "timm"],
                   help="source kind (default: detected; timm's files must be named with --from timm)")
    p.add_argument("--arch", help="registered architecture to load into (default: read off the checkpoint)")
    p.add_argument("--drop-background", action="store_true",
                   help="TF-slim 1001-class logits: drop class 0 ('background') to get ImageNet's 1000")
    p.add_argument("--preprocessing", choices=list(PRESETS),
                   help="preprocessing recorded in the file (default: the source's own recipe)")
    p.add_argument("--class-names", metavar="FILE",
                   help="text file, one class name per line (default: ImageNet's for 1000/1001 classes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    names = None
    if args.class_names:
        try:
            names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --class-names {args.class_names}: {e.strerror or e}") from None
    out = convert_file(args.src, args.output, kind=args.kind, arch=args.arch, drop_background=args.drop_background,
                       preprocessing=args.preprocessing, class_names=names, overwrite=args.overwrite)
    card = read_card(out)
    classes = len(card.class_names) if card.class_names else card.config.kwargs.get("num_classes")
    pre = card.preprocessing.name if card.preprocessing is not None else "none"
    print(f"wrote {out}: {card.arch} {card.config.kwargs}, {classes} classes, preprocessing {pre or 'custom'}")
    return 0
