"""The classification task: an in-memory ImageSet, batched augmentation on the device, cross-entropy."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from resnetkit.data import BatchAugment, ImageSet, load_dataset, normalize
from resnetkit.errors import ConfigError, MissingFileError
from resnetkit.train.config import TrainConfig, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.evaluate import evaluate
from resnetkit.train.report import Panel
from resnetkit.train.task import Task, build


def load_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """(train, eval) sets as `cfg.data` asks: the hold-out is taken from the whole training split, before
    `subset` picks the first images of what is left; `eval_subset` keeps the first eval images."""
    c = cfg.data
    try:
        train, test = load_dataset(c.name, c.data_dir, image_size=c.image_size, channels=c.channels, strict=c.strict)
    except (ConfigError, MissingFileError) as e:  # an unknown dataset, a missing folder: say which keys
        raise config_error(str(e), ("data.name", "data.data_dir"), cls=type(e)) from None
    if c.holdout:
        n = c.holdout
        if n > len(train) - c.batch_size:
            raise ConfigError(f"data.holdout={n}: the training set has {len(train)} images; keep at least one "
                              f"batch (data.batch_size={c.batch_size}) for training")
        # The papers' 45k/5k CIFAR-10 split: the last 5k training images are the validation set.
        test = dataclasses.replace(train, images=train.images[-n:], labels=train.labels[-n:])
        train = dataclasses.replace(train, images=train.images[:-n], labels=train.labels[:-n])
    if c.subset:
        train = train.subset(c.subset)
    if c.eval_subset and c.eval_subset < len(test):
        test = test.subset(c.eval_subset)
    return train, test


class ClassificationTask(Task):
    NAME = "classification"
    SUMS = ("loss", "errors", "images")
    PANELS = (Panel("loss", "cross-entropy", (("train", "train_loss"), ("test", "test_loss"))),
              Panel("top-1 error", "error (%)", (("train", "train_err"), ("test", "test_err")), scale=100))

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        self.train_set, self.eval_set = load_data(cfg)
        t, c = self.train_set, cfg.data
        self.aug = BatchAugment(pad=t.pad if c.pad is None else c.pad, flip=t.flip if c.flip is None else c.flip,
                                cutout=c.cutout)
        # The whole uint8 split lives on the training device; batches are gathered and augmented there.
        self.images, self.labels = t.images.to(device), t.labels.to(device)
        self.mean, self.std = torch.tensor(t.mean, device=device), torch.tensor(t.std, device=device)

    def build_model(self) -> torch.nn.Module:
        m, t = self.cfg.model, self.train_set
        return build(m.arch, "model.arch", m.kwargs, num_classes=t.num_classes, in_chans=t.in_chans)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.aug.sample(n, generator)

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        sel = idx.to(self.device)
        x = normalize(self.aug.crop_flip(self.images[sel], params), self.mean, self.std)  # (B, C, H, W)
        return self.aug.apply_cutout(x, params), self.labels[sel]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), y, label_smoothing=self.cfg.optim.label_smoothing)

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        n = torch.tensor(len(y), dtype=torch.float64, device=y.device)
        return torch.stack([loss.double() * n, (out.argmax(1) != y).sum().double(), n])

    def train_metrics(self, sums: torch.Tensor) -> dict:
        n = max(1.0, float(sums[2]))
        return {"train_loss": float(sums[0]) / n, "train_err": float(sums[1]) / n}

    def progress(self, sums: torch.Tensor) -> dict[str, str]:
        n = max(1.0, float(sums[2]))
        return {"loss": f"{float(sums[0]) / n:.3f}", "acc": f"{1 - float(sums[1]) / n:.3f}"}

    def evaluate(self, model: torch.nn.Module, d: Dist) -> dict:
        c, r = self.cfg.data, self.cfg.run
        ev = evaluate(model, self.eval_set, batch_size=c.eval_batch_size, amp=r.amp, channels_last=r.channels_last,
                      d=d)
        return {"test_loss": ev["loss"], "test_err": 1 - ev["top1"], "test_top5_err": 1 - ev["top5"]}

    def card(self, row: dict) -> dict:
        t = self.train_set
        return {"class_names": t.class_names, "preprocessing": t.preprocessing(),
                "metrics": {"test_top1_err": row["test_err"]}}

    def describe(self) -> str:
        return f"{self.cfg.model.arch} on {self.cfg.data.name}: {len(self.train_set)} images"

    def summary(self, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} err {100 * row['train_err']:.2f}% | test loss "
                f"{row['test_loss']:.4f} err {100 * row['test_err']:.2f}%")

    def final_summary(self, row: dict) -> str:
        return f"test error {100 * row['test_err']:.2f}% (top-1 accuracy {100 * (1 - row['test_err']):.2f}%)"
