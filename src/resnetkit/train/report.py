"""What a run leaves for a person: metrics.jsonl, a learning-curve PNG, a confusion-matrix PNG."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend to set
from matplotlib.ticker import MaxNLocator

from resnetkit._helpers import atomic_write, atomic_write_text
from resnetkit.errors import DataError

log = logging.getLogger("resnetkit.train")


def append_metrics(path: Path, row: dict | list[dict]) -> int:
    """Append `row` (or rows) to a JSONL file, a line each, in one write on an O_APPEND descriptor, so a reader
    (or a crash) sees whole lines, at worst a torn last one (which `read_metrics` drops). A failed or short
    write is cut back off. Returns the file's size before, so the caller can undo the append (os.truncate)."""
    line = "".join(json.dumps(r) + "\n" for r in (row if isinstance(row, list) else [row])).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):  # a full disk can take part of a line
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of {len(line)} bytes)",
                              str(path))
        except BaseException:
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    return before


def read_metrics(path: Path, key: str = "epoch") -> list[dict]:
    """The rows of a metrics JSONL file (steps.jsonl: key="step"). A torn last line (a write cut short by a
    crash: no newline at the end, not a whole row) is dropped with a warning; any other line that is not a
    row with an integer `key` is a DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        return []
    *lines, torn = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_row(line, path, i, key))
    if torn.strip():
        try:
            rows.append(_row(torn, path, len(lines) + 1, key))
        except DataError:
            log.warning("%s: dropped its torn last line (%d bytes without a newline: a write cut short)", path,
                        len(torn))
    return rows


def _row(line: bytes, path: Path, lineno: int, key: str = "epoch") -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: line {lineno} is not a metrics row ({' '.join(str(e).split())[:100]}); remove or "
                        "fix that line") from None
    if not isinstance(row, dict) or type(row.get(key)) is not int:
        raise DataError(f"{path}: line {lineno} is not a metrics row (a JSON object with an integer {key}); remove "
                        "or fix that line")
    return row


def truncate_metrics(path: Path, last: int, key: str = "epoch") -> None:
    """On resume: keep only the rows of epochs (steps.jsonl: steps) the checkpoint already contains (and drop
    a torn last line); the file is rewritten atomically, and only if that changes it."""
    path = Path(path)
    if not path.is_file():
        return
    text = "".join(json.dumps(r) + "\n" for r in read_metrics(path, key) if r[key] <= last)
    if text.encode() != path.read_bytes():
        atomic_write_text(path, text)


def save_figure(fig: Figure, path: Path) -> None:
    """Save via a temp file and rename, so a viewer never sees half a PNG."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)


@dataclass(frozen=True)
class Panel:
    """One panel of a learning-curve figure: metrics-row keys drawn against epoch."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str], ...]  # (legend label, metrics key)
    scale: float = 1.0  # 100 for a fraction shown in percent


SMOOTHING = 0.8  # the per-step training loss drawn as an exponential moving average (TensorBoard's slider)


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an EMA of the values, debiased so the first point is the first value."""
    out, avg, n = [], 0.0, 0
    for v in values:
        n += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def plot_curves(rows: list[dict], path: Path, panels: tuple[Panel, ...], steps: list[dict] = ()) -> None:
    """One panel per entry of `panels`, side by side, against epoch (NaN values leave gaps, ticks at whole
    epochs). With `steps` (steps.jsonl rows) the panel holding train_loss also shows the training loss of every
    logged step: faint as logged, and smoothed."""
    ep = [r.get("epoch") for r in rows]
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if steps and any(key == "train_loss" for _, key in panel.lines):
            x, y = [s["epoch"] for s in steps], [panel.scale * _float(s.get("train_loss")) for s in steps]
            ax.plot(x, y, "-", color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(x, smoothed(y), "-", color="tab:blue", linewidth=1.2, label="train (per step, smoothed)")
        for label, key in panel.lines:
            if key == "train_loss" and steps:
                label = "train (epoch mean)"
            ax.plot(ep, [panel.scale * _float(r.get(key)) for r in rows], "o-", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=panel.ylabel, title=panel.title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _float(value) -> float:
    """A metrics value as a float; a missing or non-numeric one leaves a gap (NaN)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts."""
    k = len(class_names)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.5 * k, 30)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ticks = range(k)
    ax.set_xticks(ticks, class_names, rotation=90 if k > 10 else 45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.tight_layout()
    save_figure(fig, path)
