"""`resnetkit data make-shapes`: datasets the project makes itself."""

from __future__ import annotations

import argparse

from resnetkit.data.shapes import SHAPE_CLASSES, make_shapes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = dsub.add_parser("make-shapes", help="write a synthetic VOC-layout segmentation set of coloured shapes")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--n-train", type=int, default=1000)
    q.add_argument("--n-val", type=int, default=200)
    q.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing files of the same names")
    q.set_defaults(func=cmd_make_shapes)


def cmd_make_shapes(args: argparse.Namespace) -> int:
    root = make_shapes(args.dir, args.n_train, args.n_val, args.size, args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n_train} train + {args.n_val} val images ({args.size}x{args.size}, classes: "
          f"{', '.join(SHAPE_CLASSES)}) to {root}")
    return 0
