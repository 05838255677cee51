"""Grad-CAM (Selvaraju et al. 2017): where a classifier looked, at any named end point.

For the class score y^c and an end point's activations A (N, K, h, w), the map is
ReLU(sum_k a_k A_k) with a_k = mean over (h, w) of dy^c/dA_k, upsampled to the input and scaled to
[0, 1]. Written here rather than taken from the `grad-cam` package: our models already record every
end point by TF-slim's name in `forward_end_points`, so the whole method is one autograd call, and a
dependency that hooks modules by attribute path would not know those names.

>>> from resnetkit.export import explain
>>> rows = explain("runs/demo/model.safetensors", ["shoe.png"], "cams/", class_name="Sneaker")
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnetkit._helpers import atomic_save_image, check_output, did_you_mean, open_image
from resnetkit.data.folder import collect_images
from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.export.segment import output_names
from resnetkit.weights import load


def end_point_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The end points a forward of `x` records, in order."""
    with torch.no_grad():
        return list(model.forward_end_points(x)[1])


def default_layer(names: list[str]) -> str:
    """The last block's output ('resnet_v2_50/block4'), the usual Grad-CAM layer; else the last end point
    with a spatial map."""
    blocks = [n for n in names if re.search(r"/block\d+$", n)]
    return blocks[-1] if blocks else names[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, *, layer: str | None = None,
             target: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cams (N, H, W) in [0, 1], target classes (N,), probabilities of those classes (N,)) for a batch of
    preprocessed images `x` (N, C, H, W). `target` None takes each image's top class."""
    model.eval()
    names = end_point_names(model, x[:1])
    layer = layer or default_layer(names)
    if layer not in names:
        shown = ", ".join(n for n in names if re.search(r"/(block\d+|conv1)$", n))
        raise ConfigError(f"layer {layer!r} is not an end point of {getattr(model, 'scope', 'this model')}; "
                          f"{did_you_mean(layer, names, '')} e.g. {shown} ({len(names)} in all: "
                          "`resnetkit summary NAME` lists them)")
    with torch.enable_grad():
        out, ep = model.forward_end_points(x)
        acts = ep[layer]
        if acts.ndim != 4:
            raise ConfigError(f"layer {layer!r} has no spatial map (shape {tuple(acts.shape)}); choose a block")
        logits = out.flatten(1)  # (N, K)
        target = logits.argmax(1) if target is None else torch.as_tensor(target).reshape(-1).expand(len(x))
        score = logits.gather(1, target[:, None]).sum()
        grads = torch.autograd.grad(score, acts)[0]  # (N, K, h, w)
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * acts.detach()).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    probs = logits.detach().softmax(1).gather(1, target[:, None])[:, 0]
    return cam / peak, target, probs


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) map in [0, 1] -> the map in the 'jet' colours blended over it."""
    heat = matplotlib.colormaps["jet"](cam)[..., :3] * 255
    return np.clip((1 - alpha) * image + alpha * heat + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def explain(model: nn.Module | str | os.PathLike, images: list[str | os.PathLike], out_dir: str | os.PathLike, *,
            layer: str | None = None, class_name: str | None = None, alpha: float = 0.5, overwrite: bool = False,
            allow_nonfinite: bool = False) -> list[dict]:
    """Grad-CAM of a classifier for each image: OUT_DIR/NAME_cam.png, the heat map over the image as the
    network saw it (after the card's resize and crop). `class_name` None explains each image's top class.

    Returns one {"image", "out", "class", "prob", "layer"} per image.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha {alpha}: choose a value in [0, 1]")
    model = load(model, allow_nonfinite=allow_nonfinite) if isinstance(model, str | os.PathLike) else model.eval()
    card = getattr(model, "card", None)
    if card is None or card.preprocessing is None or card.preprocessing.size is None:
        raise CheckpointError("the model's card has no input size in its preprocessing")
    if card.task != "classification":
        raise ConfigError(f"{card.arch} is a {card.task} model; Grad-CAM here explains classifiers")
    names = list(card.class_names or [str(i) for i in range(model.num_classes)])
    target = None
    if class_name is not None:
        if class_name not in names:
            raise ConfigError(f"class {class_name!r} is not one of the model's classes; "
                              f"{did_you_mean(class_name, names, 'classes: ' + ', '.join(names[:10]))}")
        target = names.index(class_name)
    pre = card.preprocessing
    out, files = Path(out_dir), collect_images(images)
    plan = {f: out / f"{stem}_cam.png" for f, stem in output_names(files).items()}
    for p in plan.values():
        check_output(p, inputs=images, overwrite=overwrite)
    rows = []
    for f, path in plan.items():
        r = cam_image(model, open_image(f, "L" if pre.channel_order == "L" else "RGB"), layer=layer, target=target,
                      alpha=alpha)
        atomic_save_image(r.pop("overlay"), path)
        rows.append({"image": str(f), "out": str(path), **r})
    return rows


def cam_image(model: nn.Module, im: Image.Image, *, layer: str | None = None, target: int | None = None,
              alpha: float = 0.5) -> dict:
    """Grad-CAM of one decoded image for a classifier with a card: {"overlay": the heat map over the image
    as the network saw it (PIL, after the card's resize and crop), "class", "index", "prob", "layer"}."""
    pre = model.card.preprocessing
    names = list(model.card.class_names or [str(i) for i in range(model.num_classes)])
    view = dataclasses.replace(pre, mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels)  # [0, 1], same crop
    x = pre(im)[None]  # (1, C, H, W)
    layer = layer or default_layer(end_point_names(model, x))
    cam, cls, prob = grad_cam(model, x, layer=layer, target=target)
    shown = view(im).permute(1, 2, 0).numpy()  # (H, W, C) in [0, 1], the crop the network saw
    shown = shown[..., ::-1] if pre.channel_order == "BGR" else shown
    shown = np.repeat(shown, 3, axis=2) if shown.shape[2] == 1 else shown
    return {"overlay": Image.fromarray(heat_overlay(shown * 255, cam[0].numpy(), alpha)),
            "class": names[int(cls[0])], "index": int(cls[0]), "prob": float(prob[0]), "layer": layer}
