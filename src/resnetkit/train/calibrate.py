"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0 that
divides the logits, fitted by minimising the negative log-likelihood on a validation split, never on the
test split. It leaves every prediction (the argmax) as it was and makes the probabilities honest.

`calibrate_file` writes a new weights file whose classifier already divides by T (its weight and bias are
W / T and b / T: exactly logits / T), so predict, eval, serve and every backend (ONNX, int8, compiled) use it
with no special case; the card records T and the figures (`extra["calibration"]`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.data import ImageSet, StreamOptions, load_classification, normalize
from resnetkit.errors import ConfigError
from resnetkit.train.analysis import Analysis
from resnetkit.weights import load, save_weights


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising mean cross-entropy of logits / T (L-BFGS on log T, from T = 1)."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


@torch.no_grad()
def _logits(model: torch.nn.Module, data, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, Analysis]:
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    out, ys, analysis = [], [], Analysis(worst=0)
    for images, labels in data.eval_batches(0, 1, batch_size):
        if len(labels):
            z = model(normalize(images, mean, std)).float()
            out.append(z)
            ys.append(labels)
            analysis.add(images, z, labels)
    return torch.cat(out), torch.cat(ys), analysis


def validation_split(model: torch.nn.Module, spec: str | None, data_dir: str | None = None):
    """The labelled images the model did not train on: `spec`'s evaluation split when given, else the
    hold-out its training run kept (data.holdout: the last N training images; data.val_path)."""
    card, pre = model.card, model.card.preprocessing
    size, channels = (pre.size[0], pre.channels) if pre is not None and pre.size else (32, model.in_chans)
    options = StreamOptions(image_size=size, channels=channels, train_crop=size)
    if spec is None:
        data = (((card.extra or {}).get("train_config") or {}).get("data") or {})
        if data.get("val_path"):
            spec = data["val_path"]
        elif data.get("holdout", 0) > 0:
            train, _ = load_classification(data["name"], data_dir or data.get("data_dir"),
                                           dataclasses.replace(options, stream="off"))
            n = data["holdout"]
            split = dataclasses.replace(train, images=train.images[-n:], labels=train.labels[-n:])
            return _normalised_as(split, pre), f"the last {n} training images of {data['name']} (data.holdout)"
        else:
            raise ConfigError("calibrating needs a validation split the model did not train on, and its training run "
                              "kept none (no data.holdout or data.val_path); give one (CLI: --calibrate-on "
                              "FOLDER), or train with data.holdout=N")
    _, split = load_classification(spec, data_dir, options)
    return _normalised_as(split, pre), f"{spec} (its evaluation split)"


def _normalised_as(split, pre):
    return dataclasses.replace(split, mean=pre.mean, std=pre.std) if pre is not None else split


def calibrate_file(weights: str | os.PathLike, out: str | os.PathLike, *, val: str | None = None,
                   data_dir: str | None = None, allow_nonfinite: bool = False) -> dict:
    """Fit T on the validation split (see validation_split) and write `out`: the model with its logits divided
    by T. Returns {"temperature", "val", "n", "nll_before", "nll_after", "ece_before", "ece_after"}."""
    model = load(weights, allow_nonfinite=allow_nonfinite)
    if model.card.task != "classification" or getattr(model, "logits", None) is None:
        raise ConfigError(f"{weights}: temperature scaling calibrates a classifier's probabilities; this file "
                          f"holds {model.card.arch}")
    split, where = validation_split(model, val, data_dir)
    if not isinstance(split, ImageSet) and not hasattr(split, "eval_batches"):
        raise ConfigError(f"{where}: not a labelled image split")
    z, y, before = _logits(model, split)
    t = fit_temperature(z, y)
    scaled = copy.deepcopy(model)
    with torch.no_grad():  # logits / T, inside the model: every backend runs it as it is
        scaled.logits.weight.div_(t)
        if scaled.logits.bias is not None:
            scaled.logits.bias.div_(t)
    after = Analysis(worst=0)
    after.add(torch.zeros(len(y), 1, 1, 1, dtype=torch.uint8), z / t, y)
    figures = {"temperature": t, "val": where, "n": len(y), "nll_before": float(F.cross_entropy(z.double(), y)),
               "nll_after": float(F.cross_entropy(z.double() / t, y)),
               "ece_before": before.calibration()["ece"], "ece_after": after.calibration()["ece"]}
    card = model.card
    save_weights(scaled, Path(out), card=card.replace(extra={**(card.extra or {}), "temperature": t,
                                                              "calibration": figures}),
                 source=f"{card.source} -> temperature scaling (T = {t:.4f}) on {where}")
    return figures
