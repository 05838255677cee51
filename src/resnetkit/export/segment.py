"""Segmentation inference: whole-image logits on slim's aligned grid, masks and overlays, and `segment`,
which writes a palette mask and an overlay PNG per image.

>>> from resnetkit.export import segment
>>> rows = segment("runs/seg/model.safetensors", ["street.jpg"], "masks/")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnetkit._helpers import atomic_save_image, check_output
from resnetkit.data.folder import collect_images
from resnetkit.data.segmentation import normalize_one, palette_png, read_image, voc_palette
from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.export.auto import SEG_CALIB_N
from resnetkit.export.backends import backend_device, input_device, make_backend
from resnetkit.weights import load


def aligned_size(n: int, stride: int) -> int:
    """The smallest stride*k + 1 >= n: the size whose last feature sits on the last pixel."""
    return stride * max(0, -(-(n - 1) // stride)) + 1


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> (N, K, H, W) logits.

    As DeepLab evaluates: pad bottom/right with 0 (the mean after normalisation) to the aligned size
    stride*k + 1, run, upsample with align_corners=True, and crop back to (H, W).
    """
    h, w = x.shape[-2:]
    return model(_aligned(model, x))[..., :h, :w]


def _aligned(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` zero-padded bottom/right to the model's aligned size."""
    h, w = x.shape[-2:]
    s = getattr(model, "output_stride", 32)
    ah, aw = aligned_size(h, s), aligned_size(w, s)
    return F.pad(x, (0, aw - w, 0, ah - h)) if (ah, aw) != (h, w) else x


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 VOC colours."""
    return voc_palette()[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend VOC colours over an (H, W, 3) uint8 image where the class is not background (0)."""
    colours = colorize(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = (mask != 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * colours, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _segmentation_model(model: nn.Module | str | os.PathLike, allow_nonfinite: bool = False) -> nn.Module:
    model = load(model, allow_nonfinite=allow_nonfinite) if isinstance(model, str | os.PathLike) else model.eval()
    card = getattr(model, "card", None)
    if card is None or card.task != "segmentation":
        what = f"{card.arch}, a {card.task} model" if card is not None else "a model without a card"
        raise ConfigError(f"segment needs a segmentation model, got {what} (resnetkit.export.predict classifies)")
    if card.preprocessing is None:
        raise CheckpointError(f"{card.arch}: its card has no preprocessing (mean/std)")
    return model


def output_names(files: list[Path]) -> dict[Path, str]:
    """A distinct output stem per input: the stem, plus the suffix where two inputs share a stem
    (photo.jpg and photo.png), plus a counter where even that collides (same name in two folders)."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    names, used = {}, set()
    for f in files:
        name = f.stem if stems[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names[f] = name
    return names


@torch.no_grad()
def segment(model: nn.Module | str | os.PathLike, images: list[str | os.PathLike], out_dir: str | os.PathLike, *,
            alpha: float = 0.5, overwrite: bool = False, allow_nonfinite: bool = False,
            backend: str = "auto", device: str | torch.device | None = None) -> list[dict]:
    """Segment each image (files or folders) and write OUT_DIR/NAME.png (palette mask, the format of VOC's
    SegmentationClass) and OUT_DIR/NAME_overlay.png (the classes' colours over the image).

    Inputs with the same stem get distinct names (`output_names`). No output may land inside an input
    folder, and existing files are replaced only with `overwrite`; both are checked before anything is
    written. `backend` is one of resnetkit.export.BACKENDS (`auto` compares pixel agreement with fp32);
    `device` 'cpu', 'cuda' or 'cuda:N' (default: resnetkit.export.backends.backend_device).
    Returns one {"image", "mask", "overlay", "fractions": {class: share of pixels}} per image.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha {alpha}: choose a value in [0, 1]")
    model = _segmentation_model(model, allow_nonfinite).to(backend_device(backend, device))
    pre = model.card.preprocessing
    mean, std = torch.tensor(pre.mean, dtype=torch.float32), torch.tensor(pre.std, dtype=torch.float32)
    names = list(model.card.class_names or [str(i) for i in range(model.num_classes)])
    out, files = Path(out_dir), collect_images(images)
    plan = {f: {"mask": out / f"{stem}.png", "overlay": out / f"{stem}_overlay.png"}
            for f, stem in output_names(files).items()}
    for paths in plan.values():
        for p in paths.values():
            check_output(p, inputs=images, overwrite=overwrite)
    # `auto` reads its calibration images (padded as predict_logits pads them) only if it has to measure.
    calib = lambda: [_aligned(model, normalize_one(read_image(f), mean, std)[None])  # noqa: E731
                     for f in files[:SEG_CALIB_N]]
    run = make_backend(backend, model, calib=calib, n_images=len(files), batch_size=1)
    where = input_device(run)
    rows = []
    for f, paths in plan.items():
        im = read_image(f)  # (3, H, W) uint8
        mask = predict_logits(run, normalize_one(im, mean, std)[None].to(where)).argmax(1)[0].to(torch.uint8)
        mask = mask.cpu().numpy()
        atomic_save_image(palette_png(mask), paths["mask"])
        atomic_save_image(Image.fromarray(overlay(im.permute(1, 2, 0).numpy(), mask, alpha)), paths["overlay"])
        rows.append({"image": str(f), **{k: str(v) for k, v in paths.items()}, "fractions": class_shares(mask, names)})
    return rows


def class_shares(mask: np.ndarray, names: list[str]) -> dict[str, float]:
    """{class name: share of the mask's pixels} for the classes present, in class order."""
    counts = np.bincount(mask.ravel(), minlength=len(names))
    return {names[k]: int(c) / mask.size for k, c in enumerate(counts) if c}
