"""The `resnetkit` command line: thin wrappers that parse arguments and call the library.

Each command group lives in its own module with a `register(subparsers)` function; this file only
collects them and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from resnetkit.errors import UserError

# A full, read-only or forbidden disk (or quota): the user's to fix, one line.
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG)

# Modules under resnetkit.cli that contribute commands, in the order `--help` lists them.
COMMAND_MODULES = ["models", "train", "infer", "convert", "data", "reproduce", "export", "serve"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"resnetkit: error: {self.prog.removeprefix('resnetkit').strip() or 'resnetkit'}: {message} "
                     f"(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        # Every file is written to a temporary name and renamed, so what was there before is intact.
        where = f"{e.filename}: " if e.filename else ""
        print(f"resnetkit: error: {where}{e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}); nothing was "
              "replaced: existing files are intact and no partial file is left", file=sys.stderr)
        return 2
    return int(rc or 0)
