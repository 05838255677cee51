"""Run directories: the folders training writes into, recognised by a marker file; `RunDir` owns every
write into one.

A run directory holds RUN_DIR/.resnetkit-run (JSON: kind, task, created, resnetkit version), written
atomically before anything else. A new run starts only in a missing or empty folder, so it never
replaces, deletes or appends to a file it did not create; a folder with the marker and a checkpoint is
a run to resume; any other non-empty folder is refused, naming what it holds. Every file the trainer
writes there is written atomically (a temp file renamed), metrics.jsonl by whole-line appends.
"""

from __future__ import annotations

import datetime
import errno
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from resnetkit._helpers import atomic_write, atomic_write_json, check_output, first_few
from resnetkit.errors import OutputExistsError, UserError
from resnetkit.train import report
from resnetkit.train.checkpoint import atomic_torch_save

MARKER = ".resnetkit-run"
CHECKPOINT, WEIGHTS, METRICS, CURVES, CONFIG = ("checkpoint.pt", "model.safetensors", "metrics.jsonl",
                                                "learning_curve.png", "config.json")
BEST, STEPS = "model_best.safetensors", "steps.jsonl"


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


class RunDir:
    """One run's folder and every write into it (rank 0 only): the marker, config.json, metrics.jsonl, the
    curves, the weights and the checkpoint.

    A new run writes the marker first, then config.json (`open`). Each epoch ends in one all-or-nothing
    `commit`: the metrics row, the curves, the weights (at the end of the run), config.json (a resumed run,
    once) and then the checkpoint, which is the commit point. If any write fails, the ones before it are
    undone, so the folder is exactly as the last checkpoint left it, and the failure is one RunWriteError
    naming the file, its errno and what was kept. A new run that fails before its first checkpoint is
    removed again (`discard`)."""

    def __init__(self, path: str | Path, *, resumed: bool, saved_step: int | None = None):
        self.path, self.resumed = Path(path), resumed
        self.saved_step = saved_step  # the step of the checkpoint on disk, once there is one
        self.created: list[Path] = []  # folders this run made (removed again by discard)
        self.config_written = False  # config.json says what this process trains
        self.pending: list[dict] = []  # steps.jsonl rows logged since the last write
        self.flushed: list[dict] = []  # ... and the ones the last checkpoint wrote (for the loggers)

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def writing(self, path: Path, what: str):
        """Turn a failed write of `path` into one RunWriteError that names it and says what was kept."""
        try:
            yield
        except OSError as e:
            if isinstance(e, UserError):
                raise
            code = f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else ""
            if self.saved_step is not None:
                kept = (f"the run is as its checkpoint at step {self.saved_step} left it ({self.file(CHECKPOINT)} "
                        "and the files before it are intact); fix the cause, then resume the run (CLI: --resume)")
            elif not self.resumed:
                kept = ("no checkpoint had been written yet, so the run's own files were removed and nothing else "
                        "was touched; fix the cause and start again")
            else:
                kept = "nothing was replaced"
            raise RunWriteError(e.errno, f"{path}: cannot write the {what}: {e.strerror or e}{code}; {kept}",
                                str(path)) from None

    def open(self, config: dict, task: str, epoch: int, step: int = 0) -> None:
        """Before training: a new run gets its folder, the marker (first) and config.json; a resumed one has
        metrics.jsonl cut back to its checkpoint's `epoch` and steps.jsonl to its `step` (a torn last line
        dropped)."""
        if not self.file(MARKER).is_file():
            with self.writing(self.path, "run directory"):
                if not self.resumed:
                    self.created = make_dirs(self.path)
            with self.writing(self.file(MARKER), "run marker"):
                write_marker(self.path, "train", task=task)
        if self.resumed:  # config.json is rewritten with the resumed run's first checkpoint
            with self.writing(self.file(METRICS), "metrics"):
                report.truncate_metrics(self.file(METRICS), epoch)
            with self.writing(self.file(STEPS), "step log"):
                report.truncate_metrics(self.file(STEPS), step, key="step")
        else:
            self._write_config(config)

    def _write_config(self, config: dict) -> Callable[[], None]:
        """The one writer of config.json; returns how to put back what was there."""
        path = self.file(CONFIG)
        old = path.read_bytes() if path.is_file() else None
        with self.writing(path, "config"):
            atomic_write_json(path, config)
        self.config_written = True
        return lambda: _restore_file(path, old)

    def log_step(self, row: dict) -> None:
        """A steps.jsonl row (step, fractional epoch, train_loss, lr, img_s), written with the next commit or
        checkpoint: the file never holds steps the checkpoint on disk does not."""
        self.pending.append(row)

    def _write_steps(self) -> Callable[[], None]:
        path = self.file(STEPS)
        with self.writing(path, "step log"):
            size = report.append_metrics(path, self.pending) if self.pending else None
        return (lambda: os.truncate(path, size)) if size is not None else (lambda: None)

    def commit(self, row: dict, panels, state: dict, save_weights: Callable[[Path], None] | None = None,
               save_best: Callable[[Path], None] | None = None) -> None:
        """End an epoch: the metrics row, the curves, the best weights (`save_best(path)`, when this epoch is
        the best), the weights (`save_weights(path)`, the final epoch only), config.json (a resumed run that has
        not yet said what it goes on with), then the checkpoint `state`. If one fails, the ones before are
        undone: the folder stays as the last checkpoint left it."""
        metrics, curves = self.file(METRICS), self.file(CURVES)
        with _all_or_nothing() as undo:
            with self.writing(metrics, "metrics"):
                size = report.append_metrics(metrics, row)
            undo.append(lambda: os.truncate(metrics, size))
            undo.append(self._write_steps())
            old_curves = curves.read_bytes() if curves.is_file() else None
            with self.writing(curves, "learning curves"):
                report.plot_curves(report.read_metrics(metrics), curves, panels,
                                   report.read_metrics(self.file(STEPS), key="step"))
            undo.append(lambda: _restore_file(curves, old_curves))
            if save_best is not None:
                undo.append(self._replace_weights(save_best, BEST))
            if save_weights is not None:
                undo.append(self._replace_weights(save_weights, WEIGHTS))
            if not self.config_written:
                undo.append(self._write_config(state["config"]))
                undo.append(lambda: setattr(self, "config_written", False))
            self.write_checkpoint(state, steps_written=True)
        for name in (WEIGHTS, BEST):
            self.file(f".{name}.prev").unlink(missing_ok=True)

    def _replace_weights(self, save_weights: Callable[[Path], None], name: str) -> Callable[[], None]:
        """Write a weights file; the old one (the last best; the weights of a run that stopped at
        schedule.max_steps and goes on) is kept (a hard link, removed after the commit) until the checkpoint
        has committed the new one. Returns the undo."""
        weights = self.file(name)
        prev, had = weights.with_name(f".{name}.prev"), weights.is_file()
        try:
            if had:
                with self.writing(prev, "weights"):
                    _link_or_copy(weights, prev)
            with self.writing(weights, "weights"):
                save_weights(weights)
        except BaseException:
            prev.unlink(missing_ok=True)  # the old weights were never replaced
            raise
        return lambda: os.replace(prev, weights) if had else weights.unlink(missing_ok=True)

    def write_checkpoint(self, state: dict, steps_written: bool = False) -> None:
        """The checkpoint (an interrupted run: with the steps logged since the last commit; the last write of
        `commit`)."""
        with _all_or_nothing() as undo:
            if not steps_written:
                undo.append(self._write_steps())
            if not self.config_written:  # a resumed run stopped before its first epoch ended
                undo.append(self._write_config(state["config"]))
            with self.writing(self.file(CHECKPOINT), "checkpoint"):
                atomic_torch_save(state, self.file(CHECKPOINT))
        self.saved_step, self.flushed, self.pending = state["step"], self.pending, []

    def discard_if_new(self) -> None:
        """A new run that never checkpointed leaves nothing behind."""
        if not self.resumed and self.saved_step is None:
            discard(self.path, self.created)


@contextmanager
def _all_or_nothing():
    """Yield a list of undo functions; if the block fails, run them newest first (best effort) and re-raise."""
    undo: list[Callable[[], None]] = []
    try:
        yield undo
    except BaseException:
        for u in reversed(undo):
            try:
                u()
            except OSError:
                pass
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _restore_file(path: Path, data: bytes | None) -> None:
    """Put back what `path` held (None: it did not exist)."""
    if data is None:
        path.unlink(missing_ok=True)
    else:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
