"""Classification inference with a model's own preprocessing (its card): `predict` for a few images,
`predict_folder` for folders of any size (DataLoader workers decode, rows stream to a CSV or JSONL file
written atomically, a progress bar shows the rate).

>>> from resnetkit.export import predict, predict_folder
>>> rows = predict(model, ["cat.jpg"], top_k=5)          # [{"image", "predictions": [{"class", "index", "prob"}]}]
>>> predict_folder(model, ["photos/"], "preds.csv", backend="onnxruntime")
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from resnetkit._helpers import atomic_write, check_output
from resnetkit.data.folder import collect_images
from resnetkit.errors import CheckpointError, ConfigError, DataError
from resnetkit.export.auto import CALIB_N
from resnetkit.export.backends import backend_device, input_device, make_backend
from resnetkit.export.tta import with_tta
from resnetkit.weights import Preprocessing, load


def _as_model(model: nn.Module | str | os.PathLike, allow_nonfinite: bool = False) -> nn.Module:
    return load(model, allow_nonfinite=allow_nonfinite) if isinstance(model, str | os.PathLike) else model.eval()


def _preprocessing(model: nn.Module) -> Preprocessing:
    card = getattr(model, "card", None)
    if card is None or card.preprocessing is None or card.preprocessing.size is None:
        raise CheckpointError("the model's card has no input size in its preprocessing; save it with "
                              "save_weights(preprocessing=Preprocessing(size=(H, W), ...))")
    if card.task != "classification":
        raise ConfigError(f"{card.arch} is a {card.task} model; use resnetkit.export.segment")
    return card.preprocessing


def _class_names(model: nn.Module, k: int) -> list[str]:
    names = model.card.class_names
    return list(names) if names is not None and len(names) == k else [str(i) for i in range(k)]


def _top_k(top_k: int) -> int:
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    return top_k


class _Images(Dataset):
    """One image per item through the card's transform: ((C, H, W) float32, readable?)."""

    def __init__(self, files: list[Path], pre: Preprocessing):
        self.files, self.pre = files, pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return self.pre(self.files[i]), True
        except DataError:
            return torch.zeros(self.pre.channels, *self.pre.size), False


def top_k_rows(probs: torch.Tensor, names: list[str], top_k: int) -> list[list[dict]]:
    """(N, K) probabilities -> per image, its `top_k` best as [{"class", "index", "prob"}, ...]."""
    top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[{"class": names[c], "index": c, "prob": p} for p, c in zip(ps, ix)]
            for ps, ix in zip(top_p.tolist(), top_i.tolist())]


@torch.no_grad()
def predict(model: nn.Module | str | os.PathLike, images: list, *, top_k: int = 5, backend: str = "auto",
            allow_nonfinite: bool = False, tta: str | None = None, device: str | torch.device | None = None
            ) -> list[dict]:
    """Classify `images` (paths, folders or PIL images) with the model's own preprocessing.

    `model` is a loaded model with a card, or the path of a weights file; `backend` is one of
    resnetkit.export.BACKENDS (`auto`: see resnetkit.export.auto); `device` 'cpu', 'cuda' or 'cuda:N'
    (default: resnetkit.export.backends.backend_device, a GPU when there is one and the backend runs there). Returns one
    {"image", "predictions": [{"class", "index", "prob"}, ...]} per image, best first. An unreadable
    file raises a ConfigError naming it.
    """
    model, top_k = _as_model(model, allow_nonfinite), _top_k(top_k)
    pre = _preprocessing(model)
    items = []  # (name, PIL image or file)
    for im in images:
        if isinstance(im, Image.Image):
            items.append(("<image>", im))
        else:
            items += [(str(f), f) for f in collect_images([im])]
    x = torch.stack([pre(im) for _, im in items])  # (N, C, H, W); a DataError names an unreadable file
    model = model.to(backend_device(backend, device))
    run = make_backend(backend, model, example=x[:2], calib=x, n_images=len(x), batch_size=len(x))
    probs = with_tta(run, tta)(x.to(input_device(run))).float().softmax(dim=1).cpu()
    names = _class_names(model, probs.shape[1])
    rows = top_k_rows(probs, names, top_k)
    return [{"image": name, "predictions": preds} for (name, _), preds in zip(items, rows)]


@torch.no_grad()
def predict_folder(model: nn.Module | str | os.PathLike, inputs: list[str | os.PathLike], out: str | os.PathLike, *,
                   backend: str = "auto", batch_size: int = 64, workers: int = 2, top_k: int = 3,
                   threads: int | None = None, progress: bool = True, overwrite: bool = False,
                   allow_nonfinite: bool = False, tta: str | None = None,
                   device: str | torch.device | None = None) -> dict:
    """Classify every image under `inputs` and write one row per image to `out` (on `device`, as `predict`).

    `out` ending in .jsonl gets {"image", "predictions": [{"class", "index", "prob"}, ...]} per line;
    anything else gets CSV rows (image, rank, class, index, prob, error). Unreadable images get an
    "error" row instead of stopping the run. An existing `out` is replaced only with `overwrite`.
    Returns {"images", "failed", "out"}.
    """
    out = check_output(out, inputs=inputs, overwrite=overwrite)
    model, top_k = _as_model(model, allow_nonfinite), _top_k(top_k)
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size ({batch_size}) must be >= 1 and workers ({workers}) >= 0")
    pre = _preprocessing(model)
    model = model.to(backend_device(backend, device))
    files = collect_images(inputs)
    data = _Images(files, pre)
    # `auto` decodes its calibration images only if it has to measure (no cached decision).
    calib = lambda: torch.stack([data[i][0] for i in range(min(len(data), CALIB_N))])  # noqa: E731
    run = with_tta(make_backend(backend, model, example=torch.randn(2, pre.channels, *pre.size), threads=threads,
                                calib=calib, n_images=len(files), batch_size=batch_size), tta)
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)
    where = input_device(run)
    jsonl = out.suffix.lower() == ".jsonl"
    failed, i = 0, 0
    with atomic_write(out) as tmp, open(tmp, "w", newline="") as f:
        writer = None if jsonl else csv.writer(f)
        if writer:
            writer.writerow(["image", "rank", "class", "index", "prob", "error"])
        bar = tqdm(total=len(files), unit="img", disable=not progress, desc="predict")
        for x, ok in loader:
            probs = run(x.to(where)).float().softmax(dim=1).cpu()
            for preds, good in zip(top_k_rows(probs, _class_names(model, probs.shape[1]), top_k), ok.tolist()):
                image = str(files[i])
                i += 1
                if not good:
                    failed += 1
                    if writer:
                        writer.writerow([image, "", "", "", "", "unreadable image"])
                    else:
                        f.write(json.dumps({"image": image, "error": "unreadable image"}) + "\n")
                elif writer:
                    for rank, p in enumerate(preds, 1):
                        writer.writerow([image, rank, p["class"], p["index"], f"{p['prob']:.6f}", ""])
                else:
                    f.write(json.dumps({"image": image, "predictions": preds}) + "\n")
            bar.update(len(ok))
        bar.close()
    return {"images": len(files), "failed": failed, "out": out}
