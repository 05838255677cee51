"""The segmentation task: VOC-layout data in memory, DeepLab's joint augmentation, per-pixel cross-entropy
(ignore label 255), mIoU at full resolution on the val split."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from resnetkit.data.segmentation import IGNORE, JointAugment, load_split
from resnetkit.errors import ConfigError, MissingFileError
from resnetkit.models import segmentation_name
from resnetkit.train.config import TrainConfig, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.evaluate import evaluate_segmentation
from resnetkit.train.report import Panel
from resnetkit.train.task import Task, build
from resnetkit.weights import Preprocessing, load_backbone_weights, read_card

log = logging.getLogger("resnetkit.train")


class SegmentationTask(Task):
    NAME = "segmentation"
    SUMS = ("loss", "images", "pixel_errors", "pixels")
    PANELS = (Panel("train loss", "cross-entropy", (("train", "train_loss"),)),
              Panel("mIoU and pixel accuracy", "fraction", (("val mIoU", "val_miou"),
                                                            ("val pixel accuracy", "val_pixel_acc"),
                                                            ("train pixel accuracy", "train_pixel_acc"))))

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        c = cfg.data
        try:
            self.train_set = load_split(c.path, c.train_split)
            self.eval_set = load_split(c.path, c.val_split)
        except MissingFileError as e:  # no such folder or split file: say which key
            raise config_error(str(e), ("data.path",), cls=MissingFileError) from None
        if c.subset:
            self.train_set = self.train_set.subset(c.subset)
        if c.eval_subset:
            self.eval_set = self.eval_set.subset(c.eval_subset)
        self.aug = JointAugment(c.crop_size, c.min_scale, c.max_scale, c.flip)
        self.mean: tuple[float, ...] | None = None  # set by init_weights or load_state_dict
        self.std: tuple[float, ...] | None = None

    def check_micro_batch(self, n: int) -> None:
        m = self.cfg.model
        if m.head == "aspp" and n < 2 and not m.freeze_bn:
            raise ConfigError(f"model.head='aspp': its image-pooling BatchNorm needs 2 or more images per process "
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
        """The backbone file's weights and normalisation when fine-tuning from one, else the training
        images' own mean and std."""
        path, pre = self.cfg.model.backbone_weights, None
        if path:
            pre = read_card(path).preprocessing
            if pre is not None and pre.channel_order == "L":
                raise ConfigError(f"model.backbone_weights={path}: a greyscale model; segmentation needs an RGB "
                                  "backbone")
            dropped = load_backbone_weights(model, path)
            log.info("backbone weights from %s (dropped %s)", path, ", ".join(dropped) or "nothing")
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
        return F.cross_entropy(out.float(), y, ignore_index=IGNORE, label_smoothing=self.cfg.optim.label_smoothing)

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

    def evaluate(self, model: torch.nn.Module, d: Dist) -> dict:
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
        return (f"train loss {row['train_loss']:.4f} pixel acc {row['train_pixel_acc']:.4f} | val mIoU "
                f"{'-' if math.isnan(miou) else f'{miou:.4f}'} pixel acc {row['val_pixel_acc']:.4f}")

    def final_summary(self, row: dict) -> str:
        return f"val mIoU {row['val_miou']:.4f}, pixel accuracy {row['val_pixel_acc']:.4f}"
