"""Evaluation: classification (loss, top-1 / top-5, confusion matrix; sharded over DDP ranks) and
segmentation (confusion matrix, IoU, mIoU, pixel accuracy at full resolution), for a model or any
inference backend; `evaluate_file` does what `resnetkit eval` does, for Python callers.

>>> from resnetkit.train import evaluate_file
>>> result = evaluate_file("runs/demo/model.safetensors", "fashion-mnist", backend="onnxruntime")
>>> result["top1"], result["per_class_accuracy"]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.data import ImageSet, StreamOptions, load_classification, normalize, with_background
from resnetkit.data.segmentation import IGNORE, SegSet, load_split, normalize_one
from resnetkit.data.sources import kind_of
from resnetkit.data.stream import EvalTransform
from resnetkit.errors import ConfigError, DataError
from resnetkit.export.backends import backend_device, make_backend
from resnetkit.export.segment import predict_logits
from resnetkit.export.tta import log_of_mean, with_tta
from resnetkit.train import distributed
from resnetkit.train.analysis import Analysis, class_report, plot_mistakes, plot_reliability
from resnetkit.train.distributed import Dist
from resnetkit.train.metrics import confusion_matrix, scores
from resnetkit.train.precision import autocast  # the one precision switch (also bf16/fp16)
from resnetkit.weights import load


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


class _Sums:
    """Running classification sums for one view of the evaluation (plain, or flip-TTA)."""

    def __init__(self, k: int, device):
        self.k = k
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion = torch.zeros(k * k, dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, self.k), dim=1).indices  # (B, 5)
        self.top5 += (top == y[:, None]).any(dim=1).sum()
        self.confusion += torch.bincount(y * self.k + top[:, 0], minlength=self.k * self.k)

    def result(self, d: Dist) -> dict:
        for t in (self.loss, self.top5, self.confusion):
            distributed.all_reduce_sum(t, d)
        confusion = self.confusion.view(self.k, self.k).cpu()
        correct, n = int(confusion.diag().sum()), int(confusion.sum())  # n: the images read (streamed: readable)
        return {"n": n, "loss": float(self.loss) / max(1, n), "top1": correct / max(1, n),
                "top5": int(self.top5) / max(1, n), "confusion": confusion}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, *, batch_size: int = 500, amp: str = "none",
             channels_last: bool = False, d: Dist = Dist(), flip: bool = False, analysis: Analysis | None = None
             ) -> dict:
    """Classification: {"loss", "top1", "top5", "n", "confusion" (K, K) int64: rows true, columns predicted}.

    `data` is an ImageSet or a streamed set (StreamSet, ShardSet: read by DataLoader workers); `model` is a
    model or a backend (resnetkit.export.make_backend). Each DDP rank evaluates its part of the split
    (`data.eval_batches`); the sums are all-reduced. With `flip` the same pass also runs each batch's mirror
    and the result gains "flip": the same keys for the averaged probabilities (flip-TTA, as
    resnetkit.export.tta), at the cost of one more forward pass. `analysis` (resnetkit.train.analysis.Analysis)
    collects the confidences and the most confident mistakes of the plain view (this process's part).
    """
    _check_batch_size(batch_size)
    model.eval()
    device = next(model.parameters()).device
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    plain, tta = _Sums(data.num_classes, device), _Sums(data.num_classes, device)
    for images, labels in data.eval_batches(d.rank, d.world, batch_size):  # uint8 (B, C, H, W), (B,)
        if not len(labels):  # a streamed batch whose images were all unreadable (skipped and logged)
            continue
        x, y = normalize(images.to(device), mean, std), labels.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x).float()
            mirrored = model(x.flip(-1)).float() if flip else None
        plain.add(logits, y)
        if analysis is not None:
            analysis.add(images, logits, y)
        if flip:
            tta.add(log_of_mean(logits.softmax(1) + mirrored.softmax(1), 2), y)
    out = plain.result(d)
    return {**out, "flip": tta.result(d)} if flip else out


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, data: SegSet, mean, std, *, batch_size: int = 16,
                          amp: str = "none", channels_last: bool = False, d: Dist = Dist()) -> dict:
    """Segmentation at full resolution: {"miou", "pixel_acc", "iou", "confusion", "n"}.

    Images of one size are batched; otherwise each runs alone (no resizing: the model is fully
    convolutional). Under DDP each rank takes a contiguous slice and the confusion matrices are summed.
    """
    _check_batch_size(batch_size)
    model.eval()
    device = next(model.parameters()).device
    k = data.num_classes
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    cm = torch.zeros(k, k, dtype=torch.int64, device=device)
    n = len(data)
    lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
    step = batch_size if data.same_size() else 1
    for i in range(lo, hi, step):
        j = min(i + step, hi)
        x = torch.stack([normalize_one(im, mean_t, std_t) for im in data.images[i:j]]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = predict_logits(model, x)
        cm += confusion_matrix(logits.float().argmax(1), torch.stack(data.masks[i:j]).to(device), k)
    distributed.all_reduce_sum(cm, d)
    cm = cm.cpu()
    return {**scores(cm), "confusion": cm, "n": n}


def evaluate_file(weights: str | os.PathLike, data: str, *, data_dir: str | None = None, split: str = "val",
                  backend: str = "eager", batch_size: int = 500, allow_nonfinite: bool = False,
                  tta: str | None = None, device: str | torch.device | None = None, worst: int = 16,
                  figures: str | os.PathLike | None = None) -> dict:
    """Evaluate a weights file on a dataset, as `resnetkit eval` does, and return the result.

    Classification files: `data` is a dataset spec (its test split is used, resized to the card's input
    size and normalised with the card's mean/std); the result has n, top1, top5, loss,
    per_class_accuracy, per_class (precision, recall, f1, support), balanced_accuracy, macro_f1, ece and
    calibration_bins (15 bins), worst (the `worst` most confident mistakes), confusion_matrix, class_names;
    `figures`: a folder to write reliability.png and worst.png into. Segmentation files: `data` is a VOC-layout or
    pairs folder and `split` its split; the result has n, miou, pixel_acc, iou (per class),
    confusion_matrix, class_names. `backend` is any of resnetkit.export.BACKENDS; `tta` None, 'flip' or
    (segmentation) 'multiscale' (resnetkit.export.tta). `device`: 'cpu', 'cuda' or 'cuda:N' (default: the
    first GPU when there is one and the backend runs there: resnetkit.export.backends.backend_device).
    """
    _check_batch_size(batch_size)
    device = backend_device(backend, device)
    model = load(weights, map_location=device, allow_nonfinite=allow_nonfinite)
    card, pre = model.card, model.card.preprocessing
    if card.task == "segmentation":
        if pre is None:
            raise ConfigError(f"{weights}: its card has no preprocessing (mean/std); save it with one")
        test = load_split(data, split)
        names = list(card.class_names or test.class_names)
        if model.num_classes != test.num_classes or len(names) != test.num_classes:
            raise ConfigError(f"{weights} predicts {model.num_classes} classes but {data} has {test.num_classes} "
                              f"({', '.join(test.class_names)})")
        mean_t, std_t = torch.tensor(pre.mean), torch.tensor(pre.std)
        calib = lambda: [normalize_one(im, mean_t, std_t)[None] for im in test.images[:4]]  # noqa: E731 (auto only)
        run = with_tta(make_backend(backend, model, calib=calib, n_images=len(test), batch_size=1), tta,
                       segmentation=True)
        ev = evaluate_segmentation(run, test, pre.mean, pre.std, batch_size=min(batch_size, 64))
        if int(ev["confusion"].sum()) == 0:
            raise DataError(f"{data} {split}: no labelled pixels (every mask pixel is the ignore label "
                            f"{IGNORE}); mIoU is undefined")
        return {"weights": str(weights), "data": str(data), "split": test.info.get("split", split), "n": ev["n"],
                "miou": ev["miou"], "pixel_acc": ev["pixel_acc"], "iou": dict(zip(names, ev["iou"])),
                "confusion_matrix": ev["confusion"].tolist(), "class_names": names}
    c, h, w = (pre.channels, *pre.size) if pre is not None and pre.size else (model.in_chans, 32, 32)
    test = _eval_split(data, data_dir, pre, h, c, model.num_classes)
    names = list(card.class_names or test.class_names)
    if len(names) != test.num_classes:
        raise ConfigError(f"{weights} predicts {len(names)} classes but {data} has {test.num_classes}")
    if pre is not None:  # normalise as the model was trained, not with the dataset's own statistics
        test = dataclasses.replace(test, mean=pre.mean, std=pre.std)
    calib = lambda: normalize(next(test.eval_batches(0, 1, 256))[0], torch.tensor(test.mean),  # noqa: E731
                              torch.tensor(test.std))  # `auto` calls it only if it has to measure
    run = with_tta(make_backend(backend, model, example=torch.randn(2, test.in_chans, *test.size), calib=calib,
                                n_images=len(test), batch_size=batch_size), tta)
    analysis = Analysis(worst)
    ev = evaluate(run, test, batch_size=batch_size, analysis=analysis)
    cm = ev["confusion"].numpy()
    per_class = {n: float(cm[i, i] / max(1, cm[i].sum())) for i, n in enumerate(names)}
    calibration = analysis.calibration()
    if figures is not None:  # what a person looks at: the reliability diagram and the worst mistakes
        plot_reliability(calibration, Path(figures) / "reliability.png", f"{Path(str(weights)).name} on {data}")
        plot_mistakes(analysis.mistakes(), names, Path(figures) / "worst.png")
    return {"weights": str(weights), "data": str(data), "n": ev["n"], "top1": ev["top1"], "top5": ev["top5"],
            "loss": ev["loss"], "per_class_accuracy": per_class, **class_report(cm, names),
            "ece": calibration["ece"], "calibration_bins": calibration["bins"],
            "worst": [{"confidence": c, "true": names[t], "predicted": names[p]} for c, _, t, p in analysis.mistakes()],
            "confusion_matrix": cm.tolist(), "class_names": names}


def _eval_split(data: str, data_dir: str | None, pre, size: int, channels: int, num_classes: int):
    """The split `evaluate_file` reads: folders, imagenet: and shards: are streamed (resized and cropped as the
    card's preprocessing says) when the card says how to crop, other data is held in memory at `size`."""
    crops = pre is not None and bool(pre.resize or pre.crop or pre.crop_fraction)
    options = StreamOptions(stream="on" if crops and kind_of(data) != "named" else "auto", train_crop=size,
                            image_size=size, channels=channels)
    _, test = load_classification(data, data_dir, options)
    if isinstance(test, ImageSet):
        return test
    resize = None  # no crop in the card: squash the whole image to size x size
    if pre is not None and pre.resize:
        resize = round(pre.resize * size / (pre.crop or size))
    elif pre is not None and pre.crop_fraction:
        resize = round(size / pre.crop_fraction)
    test = dataclasses.replace(test, eval_transform=EvalTransform(size, resize, channels))
    return with_background(test) if num_classes == 1001 and test.num_classes == 1000 else test
