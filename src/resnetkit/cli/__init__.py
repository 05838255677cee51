"""The `resnetkit` command line: thin wrappers that parse arguments and call the library.

Each command group lives in its own module with a `register(subparsers)` function; this file only
collects them and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from resnetkit.errors import UserError

# Modules under resnetkit.cli that contribute commands, in the order `--help` lists them.
COMMAND_MODULES = ["models", "train", "convert", "segment", "reproduce", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetkit", description="Residual Networks: models, training, conversion, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"resnetkit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
