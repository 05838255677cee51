"""Batch inference over folders of images: DataLoader workers decode, a backend classifies, rows stream
to a CSV or JSONL file (written atomically) with a progress bar.

    from resnetkit.infer import predict_folder
    predict_folder("runs/demo/model.safetensors", ["photos/"], "preds.csv", backend="onnxruntime")
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from resnetkit.data.folder import collect_images
from resnetkit.errors import UserError
from resnetkit.export.backends import BACKENDS, make_backend
from resnetkit.export.formats import atomic_path


class _Images(Dataset):
    """Decodes one image per item with the weights file's own recipe (resize, crop, normalise, channel
    order; as `resnetkit predict` does): (C, H, W) float32, plus an ok flag."""

    def __init__(self, files: list[Path], preprocessing: dict):
        self.files, self.pre = files, preprocessing
        self.channels = 1 if preprocessing.get("grayscale") else 3
        self.size = tuple(preprocessing["size"])  # (H, W)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import UnidentifiedImageError

        from resnetkit.weights.preprocess import preprocess

        try:
            return preprocess(self.files[i], self.pre), True
        except (OSError, UnidentifiedImageError):
            return torch.zeros(self.channels, *self.size), False


def predict_folder(weights: str | os.PathLike, inputs: list[str | os.PathLike], out: str | os.PathLike, *,
                   backend: str = "eager", batch_size: int = 64, workers: int = 2, top_k: int = 3,
                   threads: int | None = None, progress: bool = True) -> dict:
    """Classify every image under `inputs` with `weights` and write one row per image to `out`.

    `out` ending in .jsonl gets {"image", "predictions": [{"class", "index", "prob"}, ...]} per line;
    anything else gets CSV rows (image, rank, class, index, prob). Unreadable images get an "error"
    row instead of stopping the run. Returns {"images", "failed", "out"}.
    """
    from tqdm import tqdm

    from resnetkit.weights.io import load

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model = load(weights)
    pre = model.preprocessing
    if not pre:
        raise UserError(f"{weights}: no preprocessing metadata; save it with save_weights(preprocessing=...)")
    files = collect_images(inputs)
    data = _Images(files, pre)
    example = torch.randn(2, data.channels, *data.size)
    run = make_backend(backend, model, example=example, threads=threads)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)
    out = Path(out)
    jsonl = out.suffix.lower() == ".jsonl"
    failed, i = 0, 0
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f, torch.no_grad():
        writer = None if jsonl else csv.writer(f)
        if writer:
            writer.writerow(["image", "rank", "class", "index", "prob", "error"])
        bar = tqdm(total=len(files), unit="img", disable=not progress, desc="predict")
        for x, ok in loader:
            probs = run(x).float().softmax(dim=1)
            top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)
            for ps, ix, good in zip(top_p.tolist(), top_i.tolist(), ok.tolist()):
                image = str(files[i])
                i += 1
                if not good:
                    failed += 1
                    if writer:
                        writer.writerow([image, "", "", "", "", "unreadable image"])
                    else:
                        f.write(json.dumps({"image": image, "error": "unreadable image"}) + "\n")
                    continue
                preds = [{"class": names[c], "index": c, "prob": p} for p, c in zip(ps, ix)]
                if writer:
                    for rank, p in enumerate(preds, 1):
                        writer.writerow([image, rank, p["class"], p["index"], f"{p['prob']:.6f}", ""])
                else:
                    f.write(json.dumps({"image": image, "predictions": preds}) + "\n")
            bar.update(len(ok))
        bar.close()
    return {"images": len(files), "failed": failed, "out": out}
