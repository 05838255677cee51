"""Training a segmentation model: resolve(config) -> SegTrainer(cfg).fit().

Reuses the classification trainer's pieces (OptimCfg / ScheduleCfg / RunCfg, `build_optimizer`, `lr_at`,
`BudgetPlanner`, atomic checkpoints with every RNG, the (seed, epoch)-derived data order), so a run
resumes exactly. Single process: dense prediction at these sizes is CPU / one-GPU work here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from resnetkit.data.loader import derived_generator, epoch_batches, steps_per_epoch
from resnetkit.errors import UserError
from resnetkit.segmentation.data import IGNORE, JointAugment, load_split
from resnetkit.segmentation.infer import evaluate_split
from resnetkit.segmentation.models import create_segmentation_model, load_backbone_weights
from resnetkit.train import checkpoint, report
from resnetkit.train.config import OptimCfg, RunCfg, ScheduleCfg, apply_nested
from resnetkit.train.config import resolve as resolve_config
from resnetkit.train.optim import build_optimizer
from resnetkit.train.schedule import BudgetPlanner, lr_at
from resnetkit.weights.io import read_metadata, save_weights

log = logging.getLogger("resnetkit.segmentation")

CHECKPOINT, WEIGHTS, METRICS, CURVES = "checkpoint.pt", "model.safetensors", "metrics.jsonl", "learning_curve.png"


@dataclass(frozen=True)
class SegModelCfg:
    backbone: str = "resnet18"
    head: str = "slim"  # slim | aspp
    output_stride: int = 16
    backbone_weights: str | None = None  # a classification model.safetensors; its logits are dropped
    freeze_bn: bool = False  # backbone BN in eval mode (frozen statistics) while training
    kwargs: dict = field(default_factory=dict)  # more create_segmentation_model arguments (aspp_channels, ...)


@dataclass(frozen=True)
class SegDataCfg:
    path: str = ""  # VOC-layout or pairs-layout folder
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 8
    eval_batch_size: int = 16
    crop_size: int = 321  # slim's 32k+1 (321 at output stride 8 -> 41x41 features)
    min_scale: float = 0.5  # DeepLab's random scale range for VOC
    max_scale: float = 2.0
    flip: bool = True
    subset: int = 0  # train on the first N images only


@dataclass(frozen=True)
class SegTrainConfig:
    """Section names match resnetkit.train.TrainConfig's, so its override machinery applies unchanged."""

    model: SegModelCfg = field(default_factory=SegModelCfg)
    data: SegDataCfg = field(default_factory=SegDataCfg)
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=0.01))  # DeepLab: 0.007 at batch 16
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    run: RunCfg = field(default_factory=lambda: RunCfg(out="runs/segment"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegTrainConfig:
        return apply_nested(cls(), d)


def resolve(file: str | None = None, overrides: list[str] = (), flags: dict | None = None) -> SegTrainConfig:
    """Defaults <- config file <- command-line flags <- --set overrides (later wins), as for classification."""
    return resolve_config(file, overrides, flags, base=SegTrainConfig(), check_fn=check)


def check(cfg: SegTrainConfig) -> None:
    m, d, s = cfg.model, cfg.data, cfg.schedule
    if not d.path:
        raise UserError("--data DIR is required: a VOC-layout folder (see `resnetkit data make-shapes`)")
    if m.head not in ("slim", "aspp"):
        raise UserError(f"--head {m.head}: choose slim or aspp")
    if s.epochs <= 0 and s.steps <= 0 and s.budget_min <= 0:
        raise UserError("say how long to train: --epochs N, --budget-min M, or --set schedule.steps=N")
    if d.batch_size < 1 or d.crop_size < 8 or not 0 < d.min_scale <= d.max_scale:
        raise UserError("need batch size >= 1, crop size >= 8 and 0 < min_scale <= max_scale")
    if m.head == "aspp" and d.batch_size < 2 and not m.freeze_bn:
        raise UserError("the aspp head's image-pooling BatchNorm needs batches of 2 or more")
    if cfg.optim.grad_accum != 1 or cfg.run.amp != "none":
        raise UserError("segmentation training supports neither optim.grad_accum nor --amp yet")


class SegTrainer:
    def __init__(self, cfg: SegTrainConfig, resume: bool = False, clock=time.perf_counter):
        self.clock, self.t_start = clock, clock()
        self.run_dir = Path(cfg.run.out)
        state = checkpoint.load_checkpoint(self.run_dir / CHECKPOINT) if resume else None
        if state is not None:
            cfg = SegTrainConfig.from_dict(state["config"])
        elif (self.run_dir / CHECKPOINT).exists() or (self.run_dir / WEIGHTS).exists():
            raise UserError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        self.cfg = c = cfg
        if c.run.threads:
            torch.set_num_threads(c.run.threads)
        if c.run.deterministic:
            torch.use_deterministic_algorithms(True)
        self.train_set = load_split(c.data.path, c.data.train_split)
        self.val_set = load_split(c.data.path, c.data.val_split)
        if c.data.subset:
            self.train_set = self.train_set.subset(c.data.subset)
        if len(self.train_set) < c.data.batch_size:
            raise UserError(f"{c.data.path}: {len(self.train_set)} training images, fewer than one batch of "
                            f"{c.data.batch_size}; lower --batch-size")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(c.run.seed)
        try:
            self.model = create_segmentation_model(c.model.backbone, self.train_set.num_classes, c.model.head,
                                                   c.model.output_stride, **c.model.kwargs)
        except TypeError as e:  # a misspelt or duplicated model.kwargs key
            raise UserError(f"model.kwargs {c.model.kwargs}: {e}") from e
        self.mean, self.std = self._normalisation(state)
        self.model.freeze_bn = c.model.freeze_bn
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, c.optim)
        self.aug = JointAugment(c.data.crop_size, c.data.min_scale, c.data.max_scale, c.data.flip)
        self.spe = steps_per_epoch(len(self.train_set), c.data.batch_size)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        s = c.schedule
        # Steps win over a budget, a budget over epochs; a budget starts with a provisional length.
        epochs_steps = max(1, round(s.epochs * self.spe))
        self.total = s.steps if s.steps > 0 else 2 * self.spe if s.budget_min > 0 else epochs_steps
        self.planner = None
        if state is not None:
            self._restore(state)
        elif s.budget_min > 0 and s.steps <= 0:
            self.planner = BudgetPlanner(60 * s.budget_min, self.spe, self.t_start, clock)

    def _normalisation(self, state: dict | None) -> tuple[tuple, tuple]:
        """The backbone file's mean/std when fine-tuning from one, else the training images' own."""
        if state is not None:
            return tuple(state["mean"]), tuple(state["std"])
        path = self.cfg.model.backbone_weights
        if path:
            dropped = load_backbone_weights(self.model, path)
            log.info("backbone weights from %s (dropped %s)", path, ", ".join(dropped) or "nothing")
            pre = read_metadata(path)["preprocessing"] or {}
            if pre.get("grayscale"):
                raise UserError(f"{path}: a greyscale model; segmentation needs an RGB backbone")
            if pre.get("mean") and pre.get("std"):
                return tuple(pre["mean"]), tuple(pre["std"])
        return self.train_set.channel_stats()

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.total = state["step"], state["total_steps"]
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        checkpoint.set_rng_state(state["rng"])
        report.truncate_metrics(self.run_dir / METRICS, self.epoch)
        log.info("resumed %s at step %d of %d", self.run_dir, self.step, self.total)

    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "total_steps": self.total,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": checkpoint.rng_state(),
                "mean": list(self.mean), "std": list(self.std), "torch_version": str(torch.__version__)}

    # -- training ------------------------------------------------------------------------------

    def train_step(self, i: int, idx: torch.Tensor) -> float:
        """One SGD step on the images `idx`; returns the mean loss over labelled pixels."""
        c = self.cfg
        lr = lr_at(self.step, self.total, c.optim.lr, c.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        params = self.aug.sample(len(idx), derived_generator(c.run.seed, self.epoch, i, 1))
        sel = idx.tolist()
        x, y = self.aug([self.train_set.images[k] for k in sel], [self.train_set.masks[k] for k in sel], params,
                        torch.tensor(self.mean), torch.tensor(self.std))  # (N, 3, crop, crop), (N, crop, crop)
        x, y = x.to(self.device), y.to(self.device)
        logits = self.model(x)  # (N, K, crop, crop): upsampled before the loss, as DeepLab does
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE, label_smoothing=c.optim.label_smoothing)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {float(loss)} at step {self.step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def evaluate(self) -> dict:
        return evaluate_split(self.model, self.val_set, self.mean, self.std, self.cfg.data.eval_batch_size,
                              self.device)

    def start(self) -> None:
        c = self.cfg
        if self.step >= self.total:
            raise UserError(f"{self.run_dir}: the run already finished ({self.step} steps); nothing to resume")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
        log.info("training %s + %s head (output stride %d) on %s: %d images, %d classes, %d steps/epoch, %d "
                 "steps -> %s", c.model.backbone, c.model.head, c.model.output_stride, c.data.path,
                 len(self.train_set), self.train_set.num_classes, self.spe, self.total, self.run_dir)

    def run_epoch(self, bar=None) -> dict:
        """Train the rest of the current epoch, then evaluate and checkpoint; returns the metrics row."""
        c = self.cfg
        self.model.train()
        losses, t0 = [], self.clock()
        for i, idx in epoch_batches(len(self.train_set), c.data.batch_size, c.run.seed, self.epoch,
                                    self.batch_in_epoch):
            if self.step >= self.total:
                break
            losses.append(self.train_step(i, idx))
            self.batch_in_epoch = i + 1
            if self.planner is not None:
                self.total = self.planner.after_step(self.step, self.total)
            if bar is not None:
                bar.total = self.total
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return self.end_epoch(losses, self.clock() - t0)

    def fit(self) -> dict:
        """Train to the end of the schedule, evaluating and checkpointing after each epoch."""
        self.start()
        row = None
        with tqdm(total=self.total, initial=self.step, disable=not sys.stderr.isatty(), unit="step",
                  leave=False) as bar:
            while self.step < self.total:
                row = self.run_epoch(bar)
        return self.finish(row)

    def end_epoch(self, losses: list[float], train_s: float) -> dict:
        t0 = self.clock()
        ev = self.evaluate()
        if self.planner is not None:
            self.total = self.planner.after_eval(self.step, self.total, self.clock() - t0)
        if self.batch_in_epoch >= self.spe or self.step >= self.total:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        n = len(losses) * self.cfg.data.batch_size
        row = {"epoch": self.epoch, "step": self.step, "train_loss": sum(losses) / max(1, len(losses)),
               "val_miou": ev["miou"], "val_pixel_acc": ev["pixel_acc"], "val_iou": ev["iou"],
               "lr": self.optimizer.param_groups[0]["lr"], "img_s": n / max(1e-9, train_s),
               "time_s": self.clock() - self.t_start}
        report.append_metrics(self.run_dir / METRICS, row)
        plot_curves(report.read_metrics(self.run_dir / METRICS), self.run_dir / CURVES)
        log.info("epoch %d step %d/%d | train loss %.4f | val mIoU %.4f pixel acc %.4f | %.1f img/s | %.0f s",
                 self.epoch, self.step, self.total, row["train_loss"], ev["miou"], ev["pixel_acc"], row["img_s"],
                 row["time_s"])
        checkpoint.atomic_torch_save(self.state_dict(), self.run_dir / CHECKPOINT)
        return row

    def preprocessing(self) -> dict:
        c = self.cfg
        return {"task": "segmentation", "mean": list(self.mean), "std": list(self.std), "grayscale": False,
                "crop_size": c.data.crop_size, "output_stride": c.model.output_stride, "ignore_label": IGNORE}

    def finish(self, row: dict) -> dict:
        save_weights(self.model, self.run_dir / WEIGHTS, class_names=self.train_set.class_names,
                     preprocessing=self.preprocessing(),
                     source=f"resnetkit train --task segmentation -> {self.run_dir}",
                     extra={"val_miou": row["val_miou"], "val_pixel_acc": row["val_pixel_acc"],
                            "val_iou": row["val_iou"], "steps": self.step, "train_config": self.cfg.to_dict(),
                            "wall_s": row["time_s"], "command": " ".join(sys.argv)})
        log.info("done: val mIoU %.4f, pixel accuracy %.4f after %d steps in %.0f s; weights %s", row["val_miou"],
                 row["val_pixel_acc"], self.step, row["time_s"], self.run_dir / WEIGHTS)
        return {"exit_code": 0, **row}


def train_segmentation(cfg: SegTrainConfig, resume: bool = False) -> dict:
    """Build a SegTrainer from `cfg` and fit."""
    return SegTrainer(cfg, resume=resume).fit()


def plot_curves(rows: list[dict], path: Path) -> None:
    """Train loss and val mIoU against wall time, two panels (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnetkit.segmentation.infer import atomic_save

    t = [r["time_s"] / 60 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(t, [r["train_loss"] for r in rows], "o-")
    a.set(xlabel="minutes", ylabel="cross-entropy", title="train loss")
    b.plot(t, [r["val_miou"] if not math.isnan(r["val_miou"]) else 0 for r in rows], "o-")
    b.set(xlabel="minutes", ylabel="mIoU", title="val mIoU", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    from PIL import Image

    im = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba())
    plt.close(fig)
    atomic_save(im.convert("RGB"), path)
