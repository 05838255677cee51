"""Run directories: the folders training writes into, recognised by a marker file.

A run directory holds RUN_DIR/.resnetkit-run (JSON: kind, task, created, resnetkit version), written
atomically before anything else. A new run starts only in a missing or empty folder, so it never
replaces, deletes or appends to a file it did not create; a folder with the marker and a checkpoint is
a run to resume; any other non-empty folder is refused, naming what it holds. Every file the trainer
writes there is written atomically (a temp file renamed), metrics.jsonl by whole-line appends.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path

from resnetkit._helpers import atomic_write_json, check_output, first_few
from resnetkit.errors import OutputExistsError, UserError

MARKER = ".resnetkit-run"
CHECKPOINT, WEIGHTS = "checkpoint.pt", "model.safetensors"


class RunWriteError(UserError, OSError):
    """A write into a run directory failed (a full, read-only or forbidden disk, ...); the message names
    the file and says what was kept. `errno` and `filename` are those of the failed write."""

    def __init__(self, code: int | None, message: str, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename, self.message = code, filename, message

    def __str__(self) -> str:
        return self.message


def read_marker(run_dir: Path) -> dict | None:
    """The marker's contents; None without a marker, {} for one that is not a JSON table."""
    p = Path(run_dir) / MARKER
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_bytes()[:65536].decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return d if isinstance(d, dict) else {}


def write_marker(run_dir: Path, kind: str, **info) -> Path:
    """Write the marker (atomically) that makes `run_dir` a resnetkit folder of `kind` ("train", ...)."""
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        version = importlib.metadata.version("resnetkit")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "unknown"
    return atomic_write_json(Path(run_dir) / MARKER, {"kind": kind, **info, "created": created,
                                                      "resnetkit": version})


def check_new_run_dir(run_dir: Path, inputs=()) -> None:
    """Refuse `run_dir` for a new run unless it is missing or empty (read-only: creates nothing).

    `inputs`: files and folders the run reads (its dataset, a backbone); the run directory may not be
    one of them or lie inside one."""
    run_dir = Path(run_dir)
    check_output(run_dir, inputs=[i for i in inputs if i], overwrite=True)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"run.out={run_dir}: {parent} is a file, not a folder; choose another "
                                        "run.out")
            break
    if not run_dir.exists():
        return
    names = sorted(p.name for p in run_dir.iterdir())
    if not names:
        return
    marker = read_marker(run_dir)
    if marker is not None and marker.get("kind", "train") != "train":
        raise OutputExistsError(f"run.out={run_dir} is a {marker.get('kind')!s:.40} folder, not a training run; "
                                "choose another run.out")
    if marker is not None and WEIGHTS in names and CHECKPOINT in names:
        raise OutputExistsError(f"run.out={run_dir} holds a finished run ({WEIGHTS}); choose another run.out for a "
                                "new run")
    if marker is not None and CHECKPOINT in names:
        raise OutputExistsError(f"run.out={run_dir} holds a run ({CHECKPOINT}); continue it with resume=True "
                                "(CLI: --resume), or choose another run.out for a new run")
    if marker is not None:
        raise OutputExistsError(f"run.out={run_dir} holds a run that stopped before its first checkpoint "
                                f"({first_few(names)}); it cannot be resumed: remove that folder, or choose another "
                                "run.out")
    hint = ("; if it is a run of an older resnetkit, continue it with resume=True (CLI: --resume)"
            if CHECKPOINT in names else "")
    raise OutputExistsError(f"run.out={run_dir} is not empty and not a resnetkit run directory (it holds "
                            f"{first_few(names)}){hint}; a new run starts only in a new or empty folder, so that "
                            "nothing in it is replaced or appended to: choose another run.out")


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first (to remove them again on a failed start)."""
    path = Path(path)
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def discard(run_dir: Path, created: list[Path]) -> None:
    """Remove a failed new run: the files in `run_dir` (it was missing or empty when the run started, so
    every file in it is the run's own) and the folders in `created`; best effort, never raises."""
    run_dir = Path(run_dir)
    try:
        entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    except OSError:
        entries = []
    for p in entries:
        if p.is_file() or p.is_symlink():
            try:
                p.unlink()
            except OSError:
                pass
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break
