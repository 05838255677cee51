"""`resnetkit data make-shapes` / `make-scenes`: datasets the project makes itself; `data pack`: tar shards."""

from __future__ import annotations

import argparse

from resnetkit.data.scenes import make_scenes
from resnetkit.data.shapes import SHAPE_CLASSES, make_shapes
from resnetkit.data.shards import pack, parse_size
from resnetkit.errors import ConfigError


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
    c = dsub.add_parser("make-scenes", help="write a VOC-layout segmentation set of Fashion-MNIST items composed "
                        "on photos and textures")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--n-train", type=int, default=2000)
    c.add_argument("--n-val", type=int, default=500)
    c.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data-dir", metavar="DIR", help="folder of the Fashion-MNIST idx files (default: found or fetched "
                   "as `resnetkit train --data fashion-mnist` does)")
    c.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing files of the same names")
    c.set_defaults(func=cmd_make_scenes)
    k = dsub.add_parser("pack", help="pack an image folder into WebDataset-layout tar shards (train --data shards:...)")
    k.add_argument("folder", metavar="FOLDER", help="ROOT/CLASS/IMAGE, or ROOT/train + ROOT/val|test")
    k.add_argument("out", metavar="OUT", help="folder for OUT/train-NNNNNN.tar, OUT/val-NNNNNN.tar and index.json")
    k.add_argument("--shard-size", default="1GB", help="about this many bytes per shard (default 1GB; e.g. 500MB)")
    k.add_argument("--val", metavar="PATH", help="a separate validation folder")
    k.add_argument("--overwrite", action="store_true", help="replace shards and index.json of the same names")
    k.set_defaults(func=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.shard_size)
    except ConfigError as e:
        raise ConfigError(f"--shard-size {args.shard_size}: give a size such as 1GB, 500MB or 64K") from e
    index = pack(args.folder, args.out, size, val=args.val, overwrite=args.overwrite)
    patterns = {split: f"{args.out}/{split}-{{000000..{len(shards) - 1:06d}}}.tar"
                for split, shards in index["splits"].items()}
    for split, shards in index["splits"].items():
        print(f"{split}: {sum(n for _, n in shards)} images in {len(shards)} shard(s): {patterns[split]}")
    print(f"train with: resnetkit train --data shards:'{patterns['train']}'")
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    root = make_shapes(args.dir, args.n_train, args.n_val, args.size, args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n_train} train + {args.n_val} val images ({args.size}x{args.size}, classes: "
          f"{', '.join(SHAPE_CLASSES)}) to {root}")
    return 0


def cmd_make_scenes(args: argparse.Namespace) -> int:
    root = make_scenes(args.dir, args.n_train, args.n_val, args.size, args.seed, args.data_dir,
                       overwrite=args.overwrite)
    print(f"wrote {args.n_train} train + {args.n_val} val scenes ({args.size}x{args.size}, background + the 10 "
          f"Fashion-MNIST classes) to {root}")
    return 0
