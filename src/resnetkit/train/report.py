"""What a run leaves for a person: metrics.jsonl, a learning-curve PNG, a confusion-matrix PNG."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def append_metrics(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """On resume: keep only the rows of epochs the checkpoint already contains."""
    rows = [r for r in read_metrics(path) if r["epoch"] <= last_epoch]
    _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save_fig(fig, path: Path) -> None:
    """Save via a temp file and rename, so a viewer never sees half a PNG."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Train / test loss and error against epoch, two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["test_loss"] for r in rows], "o-", label="test")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, [100 * r["train_err"] for r in rows], "o-", label="train")
    b.plot(ep, [100 * r["test_err"] for r in rows], "o-", label="test")
    b.set(xlabel="epoch", ylabel="error (%)", title="top-1 error")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_fig(fig, path)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.5 * k, 30)
    fig, ax = plt.subplots(figsize=(side, side))
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
    _save_fig(fig, path)
