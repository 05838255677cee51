"""Where a classifier fails and whether its probabilities can be trusted: per-class precision, recall, F1 and
support, balanced accuracy and macro-F1 (from the confusion matrix, as scikit-learn defines them), the
expected calibration error with its reliability diagram (Guo et al. 2017, 15 equal-width confidence bins),
and the most confident mistakes (fastai's plot_top_losses, by confidence in the wrong class).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from resnetkit.train.report import save_figure

ECE_BINS = 15  # Guo et al. 2017


def class_report(cm: np.ndarray, names: list[str]) -> dict:
    """{"per_class": {name: {precision, recall, f1, support}}, "balanced_accuracy", "macro_f1"} from a (K, K)
    confusion matrix (rows true). A class never predicted has precision 0, one without images recall 0 and
    is left out of the averages, as scikit-learn's zero_division=0 with the labels present."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    present = support > 0
    per_class = {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for n, p, r, f, s in zip(names, precision, recall, f1, support)}
    return {"per_class": per_class, "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


class Analysis:
    """Running confidence statistics and the `worst` most confident mistakes of an evaluation."""

    def __init__(self, worst: int = 16):
        self.worst = worst
        self.conf: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.heap: list[tuple[float, int, torch.Tensor, int, int]] = []  # (conf, order, image, true, predicted)
        self.seen = 0

    def add(self, images: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """images: uint8 (B, C, H, W) as read; logits (B, K) of the view scored; y (B,)."""
        prob = logits.float().softmax(1)
        conf, pred = prob.max(1)
        self.conf.append(conf.cpu())
        self.correct.append((pred == y).cpu())
        wrong = (pred != y).nonzero().flatten().tolist() if self.worst else []
        for i in wrong:
            item = (float(conf[i]), self.seen + i, images[i].cpu(), int(y[i]), int(pred[i]))
            if len(self.heap) < self.worst:
                heapq.heappush(self.heap, item)
            elif item[0] > self.heap[0][0]:
                heapq.heapreplace(self.heap, item)
        self.seen += len(y)

    def calibration(self, bins: int = ECE_BINS) -> dict:
        """{"ece", "bins": [{"lo", "hi", "n", "accuracy", "confidence"}]}."""
        conf = torch.cat(self.conf).double() if self.conf else torch.zeros(0, dtype=torch.float64)
        correct = torch.cat(self.correct).double() if self.correct else torch.zeros(0, dtype=torch.float64)
        rows, ece, n = [], 0.0, max(1, len(conf))
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            sel = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
            k = int(sel.sum())
            acc = float(correct[sel].mean()) if k else None  # None: an empty bin (JSON has no NaN)
            mean_conf = float(conf[sel].mean()) if k else None
            if k:
                ece += k / n * abs(acc - mean_conf)
            rows.append({"lo": lo, "hi": hi, "n": k, "accuracy": acc, "confidence": mean_conf})
        return {"ece": ece, "bins": rows}

    def mistakes(self) -> list[tuple[float, torch.Tensor, int, int]]:
        """The most confident mistakes, most confident first: (confidence, image, true, predicted)."""
        return [(c, im, t, p) for c, _, im, t, p in sorted(self.heap, key=lambda r: (-r[0], r[1]))]


def plot_reliability(calibration: dict, path, title: str = "reliability") -> None:
    """Accuracy against confidence per bin (bars) and the diagonal a calibrated model follows."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    bins = [b for b in calibration["bins"] if b["n"]]
    width = 1 / len(calibration["bins"])
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge", edgecolor="black",
           color="tab:blue", label="accuracy")
    ax.bar([b["lo"] for b in bins], [abs(b["confidence"] - b["accuracy"]) for b in bins],
           bottom=[min(b["accuracy"], b["confidence"]) for b in bins], width=width, align="edge", color="none",
           edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"{title}\nECE {100 * calibration['ece']:.2f}%", fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_mistakes(mistakes, names: list[str], path, mean=None, std=None) -> None:
    """A grid of the most confident mistakes, each titled true -> predicted (confidence)."""
    n = max(1, len(mistakes))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (conf, im, t, p) in zip(axes.flat, mistakes):
        a = im.numpy()
        ax.imshow(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), cmap="gray" if a.shape[0] == 1 else None)
        ax.set_title(f"{names[t][:14]} -> {names[p][:14]}\n{100 * conf:.1f}%", fontsize=8)
    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle("most confident mistakes: true -> predicted (confidence)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
