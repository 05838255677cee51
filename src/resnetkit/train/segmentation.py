"""The segmentation task: VOC-layout data in memory, DeepLab's joint augmentation, per-pixel cross-entropy
(ignore label 255; plain, class-weighted or OHEM), mIoU at full resolution on the val split.

The values a config leaves automatic (None) are chosen from the data and the backbone as the task loads
the data (resnetkit.train.seg_defaults); the task's `cfg` is the resolved config, which the Trainer runs
and writes to config.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit._helpers import load_state_dict_strict
from resnetkit.data.segmentation import IGNORE, JointAugment, load_split, summarize
from resnetkit.errors import CheckpointError, ConfigError, MissingFileError
from resnetkit.models import segmentation_name
from resnetkit.pretrained import REGISTRY, list_pretrained, load_pretrained
from resnetkit.train.config import TrainConfig, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.evaluate import evaluate_segmentation
from resnetkit.train.report import Panel
from resnetkit.train.seg_defaults import format_choices, resolve_auto
from resnetkit.train.task import Task, TaskData, build
from resnetkit.weights import Preprocessing, load_backbone_weights, read_card

log = logging.getLogger("resnetkit.train")

OHEM_THRESH = 0.7  # keep pixels whose true-class probability is below this (PSPNet / mmseg practice)
OHEM_MIN_KEPT = 1 / 16  # ... and at least this share of the labelled pixels of the batch, the hardest


def class_weights(freq: tuple[float, ...] | list[float]) -> torch.Tensor:
    """Inverse square root of each class's pixel share, scaled to mean 1 over the classes present.

    Gentler than median-frequency balancing (Eigen and Fergus 2015), whose 1/f weights make a rare class
    count ~20x the background on shapes and trade background IoU for bloated masks. A class absent from
    the sample gets the largest weight of the present ones."""
    f = torch.tensor(freq, dtype=torch.float32)
    present = f > 0
    if not present.any():
        return torch.ones_like(f)
    w = torch.zeros_like(f)
    w[present] = f[present].rsqrt()
    w = w / w[present].mean()
    w[~present] = w[present].max()
    return w


def ohem_cross_entropy(logits: torch.Tensor, y: torch.Tensor, thresh: float = OHEM_THRESH,
                       min_kept: float = OHEM_MIN_KEPT, label_smoothing: float = 0.0) -> torch.Tensor:
    """Online hard example mining cross-entropy (Shrivastava et al. 2016; as PSPNet and DeepLab codebases use
    it for segmentation): the mean loss over the labelled pixels whose true-class probability is below
    `thresh`, or over the `min_kept` share of labelled pixels with the lowest probability if that is more.
    logits (N, K, H, W) float, y (N, H, W) with IGNORE."""
    ce = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="none", label_smoothing=label_smoothing)
    valid = y != IGNORE  # (N, H, W)
    n = int(valid.sum())
    if n == 0:
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = F.softmax(logits, 1).gather(1, y.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
        prob = prob.masked_fill(~valid, 2.0)  # (N, H, W); ignored pixels sort last
        k = max(1, min(n, math.ceil(min_kept * n)))
        kth = prob.flatten().kthvalue(k).values
        keep = valid & ((prob < thresh) | (prob <= kth))
    return ce[keep].mean()


class SegmentationTask(Task):
    NAME = "segmentation"
    SUMS = ("loss", "images", "pixel_errors", "pixels")
    METRICS = ("val_miou", "val_pixel_acc", "train_loss", "train_pixel_acc")
    PANELS = (Panel("train loss", "cross-entropy", (("train", "train_loss"),)),
              Panel("mIoU and pixel accuracy", "fraction", (("val mIoU", "val_miou"),
                                                            ("val pixel accuracy", "val_pixel_acc"),
                                                            ("train pixel accuracy", "train_pixel_acc"))))

    @classmethod
    def load(cls, cfg: TrainConfig) -> tuple[TaskData, TrainConfig, dict[str, tuple]]:
        """The splits and a look at them (resnetkit.data.segmentation.summarize); every automatic (None) value
        chosen from it and the backbone (resnetkit.train.seg_defaults)."""
        c = cfg.data
        try:
            train, val = load_split(c.path, c.train_split), load_split(c.path, c.val_split)
        except MissingFileError as e:  # no such folder or split file: say which key
            raise config_error(str(e), ("data.path",), cls=MissingFileError) from None
        if c.subset:
            train = train.subset(c.subset)
        if c.eval_subset:
            val = val.subset(c.eval_subset)
        summary = summarize(train)
        cfg, choices = resolve_auto(cfg, summary, weights_arch(cfg.model.backbone_weights))
        auto = {c.key: (c.value, c.reason) for c in choices if c.auto}
        return TaskData(train, val, summary, choices), cfg, auto

    @classmethod
    def log_choices(cls, choices: dict[str, tuple], data: TaskData) -> None:
        log.info("%s", format_choices(data.notes, data.summary))

    def __init__(self, cfg: TrainConfig, data: TaskData, device: torch.device):
        super().__init__(cfg, data, device)
        c = cfg.data
        self.data_summary = data.summary
        self.aug = JointAugment(c.crop_size, c.min_scale, c.max_scale, c.flip)
        self.class_weights = class_weights(self.data_summary.class_freq).to(device)
        self.mean: tuple[float, ...] | None = None  # set by init_weights or load_state_dict
        self.std: tuple[float, ...] | None = None

    @classmethod
    def check_micro_batch(cls, cfg: TrainConfig, n: int) -> None:
        m = cfg.model
        if m.head in ("aspp", "deeplabv3plus") and n < 2 and not m.freeze_bn:
            raise ConfigError(f"model.head={m.head!r}: its image-pooling BatchNorm needs 2 or more images per process "
                              f"and micro-batch, got {n} (data.batch_size / processes / optim.grad_accum); raise "
                              "data.batch_size or set model.freeze_bn")

    def build_model(self) -> torch.nn.Module:
        m = self.cfg.model
        try:
            name = segmentation_name(m.head, m.backbone)
        except ConfigError as e:
            raise config_error(str(e), ("model.head",)) from None
        model = build(name, "model.backbone", m.kwargs, num_classes=self.train_set.num_classes,
                      output_stride=m.output_stride)
        model.freeze_bn = m.freeze_bn
        return model

    def init_weights(self, model: torch.nn.Module) -> None:
        """The backbone's weights and normalisation when fine-tuning (model.backbone_weights: a weights file
        or a pretrained tag), else the training images' own mean and std."""
        spec = self.cfg.model.backbone_weights
        pre = load_backbone(model, spec, self.cfg.model.backbone) if spec else None
        self.mean, self.std = (pre.mean, pre.std) if pre is not None else self.train_set.channel_stats()

    def state_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = tuple(state["mean"]), tuple(state["std"])

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.aug.sample(n, generator)

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Images differ in size, so they are augmented one by one on the CPU, then moved as one batch.
        sel = idx.tolist()
        x, y = self.aug([self.train_set.images[k] for k in sel], [self.train_set.masks[k] for k in sel], params,
                        torch.tensor(self.mean), torch.tensor(self.std))  # (N, 3, crop, crop), (N, crop, crop)
        return x.to(self.device), y.to(self.device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The logits are upsampled to the crop before the loss, as DeepLab does: (N, K, crop, crop).
        kind, smoothing = self.cfg.model.loss, self.cfg.optim.label_smoothing
        if kind == "ohem":
            return ohem_cross_entropy(out.float(), y, label_smoothing=smoothing)
        weight = self.class_weights if kind == "weighted" else None
        return F.cross_entropy(out.float(), y, weight=weight, ignore_index=IGNORE, label_smoothing=smoothing)

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        labelled = y != IGNORE
        n = torch.tensor(len(y), dtype=torch.float64, device=y.device)
        errors = ((out.argmax(1) != y) & labelled).sum().double()
        return torch.stack([loss.double() * n, n, errors, labelled.sum().double()])

    def train_metrics(self, sums: torch.Tensor) -> dict:
        return {"train_loss": float(sums[0]) / max(1.0, float(sums[1])),
                "train_pixel_acc": 1 - float(sums[2]) / max(1.0, float(sums[3]))}

    def progress(self, sums: torch.Tensor) -> dict[str, str]:
        m = self.train_metrics(sums)
        return {"loss": f"{m['train_loss']:.3f}", "pixel_acc": f"{m['train_pixel_acc']:.3f}"}

    def evaluate(self, model: torch.nn.Module, d: Dist, final: bool = False) -> dict:
        c, r = self.cfg.data, self.cfg.run
        ev = evaluate_segmentation(model, self.eval_set, self.mean, self.std, batch_size=c.eval_batch_size,
                                   amp=r.amp, channels_last=r.channels_last, d=d)
        return {"val_miou": ev["miou"], "val_pixel_acc": ev["pixel_acc"], "val_iou": ev["iou"]}

    def card(self, row: dict) -> dict:
        return {"class_names": self.train_set.class_names,
                "preprocessing": Preprocessing(mean=tuple(self.mean), std=tuple(self.std)),
                "metrics": {k: row[k] for k in ("val_miou", "val_pixel_acc", "val_iou")}}

    def describe(self) -> str:
        m, t = self.cfg.model, self.train_set
        return (f"{m.backbone} + {m.head} head (output stride {m.output_stride}) on {self.cfg.data.path}: {len(t)} "
                f"images, {t.num_classes} classes")

    def summary(self, row: dict) -> str:
        miou = row["val_miou"]
        per_class = " ".join(f"{n} {'-' if math.isnan(v) else f'{v:.2f}'}"
                             for n, v in zip(self.train_set.class_names, row["val_iou"]))
        return (f"train loss {row['train_loss']:.4f} pixel acc {row['train_pixel_acc']:.4f} | val mIoU "
                f"{'-' if math.isnan(miou) else f'{miou:.4f}'} pixel acc {row['val_pixel_acc']:.4f} | IoU {per_class}")

    def final_summary(self, row: dict) -> str:
        return f"val mIoU {row['val_miou']:.4f}, pixel accuracy {row['val_pixel_acc']:.4f}"


# -- backbone weights ------------------------------------------------------------------------------

def weights_arch(spec: str | None) -> str | None:
    """The architecture model.backbone_weights holds (a pretrained tag or a weights file), None without one."""
    if not spec:
        return None
    if spec in REGISTRY:
        return REGISTRY[spec].arch
    if not Path(spec).is_file():
        tags = ", ".join(t for t in list_pretrained() if not t.startswith("resnet_v1"))
        raise config_error(f"model.backbone_weights={spec}: no such weights file, nor a pretrained tag ({tags}, ...)",
                           ("model.backbone_weights",), cls=MissingFileError)
    try:
        card = read_card(spec)
    except (CheckpointError, MissingFileError) as e:
        raise config_error(f"model.backbone_weights: {e}", ("model.backbone_weights",), cls=type(e)) from None
    if card.task != "classification":
        raise config_error(f"model.backbone_weights={spec}: holds {card.arch}, a {card.task} model; give a "
                           "classification weights file", ("model.backbone_weights",))
    return card.arch


def load_backbone(model: torch.nn.Module, spec: str, backbone: str) -> Preprocessing | None:
    """Copy the classification weights `spec` (file or pretrained tag) into `model.backbone`, logits dropped
    (TF-slim's 1001-class ones with their 'background' row too: no class survives into segmentation), and
    return their preprocessing. A BGR model (VGG/Caffe conversions) gets its first convolution's input
    channels reversed, so it reads the RGB images this task feeds it."""
    arch = weights_arch(spec)
    if arch != backbone:
        raise config_error(f"model.backbone_weights={spec} holds {arch}, but model.backbone is {backbone}; set "
                           f"model.backbone={arch} (or leave it automatic)", ("model.backbone_weights",
                                                                               "model.backbone"))
    if spec in REGISTRY:
        src = load_pretrained(spec)
        pre = src.card.preprocessing
        _check_rgb(spec, pre, src.config.kwargs.get("in_chans", 3))
        state = {k: v for k, v in src.state_dict().items() if not k.startswith("logits.")}
        load_state_dict_strict(model.backbone, state, source=spec)
    else:
        card = read_card(spec)
        pre = card.preprocessing
        _check_rgb(spec, pre, card.config.kwargs.get("in_chans", 3))
        load_backbone_weights(model, spec)
    log.info("backbone weights from %s (logits dropped)", spec)
    if pre is not None and pre.channel_order == "BGR":
        conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight.copy_(conv.weight.flip(1))  # (out, 3, k, k): B,G,R -> R,G,B
        pre = Preprocessing(mean=tuple(reversed(pre.mean)), std=tuple(reversed(pre.std)))
    return pre


def _check_rgb(spec: str, pre: Preprocessing | None, in_chans: int) -> None:
    if in_chans != 3 or (pre is not None and pre.channel_order == "L"):
        raise config_error(f"model.backbone_weights={spec}: a {in_chans if in_chans != 3 else 1}-channel (greyscale) "
                           "model; segmentation needs a 3-channel backbone: train the classifier on RGB images "
                           "(e.g. an image folder with data.channels=3)", ("model.backbone_weights",))
