"""The classification task: an in-memory ImageSet (batched augmentation on the device) or a streamed set
(StreamSet, ShardSet: DataLoader workers decode uint8 batches), MixUp/CutMix on the device, cross-entropy."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.data import BatchAugment, ImageSet, MixAugment, load_classification, normalize
from resnetkit.data.sources import DataSpec, with_background
from resnetkit.errors import ConfigError, DataError, MissingFileError
from resnetkit.models import model_defaults
from resnetkit.train import finetune
from resnetkit.train.config import TrainConfig, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.evaluate import evaluate
from resnetkit.train.report import Panel
from resnetkit.train.task import Task, TaskData, build

log = logging.getLogger("resnetkit.train")


def load_data(cfg: TrainConfig):
    """(train, eval) sets as `cfg.data` asks, in memory (ImageSet) or streamed (resnetkit.data.sources): the
    hold-out is taken from the whole training split, before `subset` picks the first images of what is left;
    `eval_subset` keeps the first eval images."""
    c = cfg.data
    try:
        train, test = load_classification(DataSpec.parse(c.name), c.data_dir, c, _planned_epochs(cfg))
    except (ConfigError, MissingFileError) as e:  # an unknown dataset, a missing folder: say which keys
        raise config_error(str(e), ("data.name", "data.data_dir", "data.stream", "data.val_path"),
                           cls=type(e)) from None
    if c.holdout and not isinstance(train, ImageSet):
        raise config_error("data.holdout works on data held in memory; streamed data takes its validation split "
                           "from the data (val/, data.val_path)", ("data.holdout", "data.stream"))
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


def _planned_epochs(cfg: TrainConfig):
    """The passes over the training images the schedule makes, as a function of their count (None for a
    budget in minutes: not known before the speed is): what data.stream=auto weighs decoding once against."""
    s, b = cfg.schedule, cfg.data.batch_size
    if s.budget_min > 0 and s.steps <= 0:
        return None
    steps = s.steps if s.steps > 0 else None
    if steps is not None and s.max_steps > 0:
        steps = min(steps, s.max_steps)

    def epochs(n_train: int) -> float:
        n_train = min(n_train, cfg.data.subset) if cfg.data.subset else n_train  # data.subset trains on fewer
        full = steps * b / max(1, n_train) if steps is not None else s.epochs
        return min(full, s.max_steps * b / max(1, n_train)) if s.max_steps > 0 else full
    return epochs


# Below this many planned epochs an unset data.pad means no pad-and-crop. Tuned on a 5,000-image validation split
# of Fashion-MNIST (benchmarks/time_to_accuracy.py --val 5000, 4.5 min = 6 epochs): pad 0 beat the dataset's pad 2.
SHORT_RUN_EPOCHS = 10


class InMemoryBatches:
    """Batches of an ImageSet: the whole uint8 split lives on the training device; batches are gathered,
    augmented (pad-and-crop, flip, cutout: BatchAugment) and normalised there."""

    def __init__(self, data: ImageSet, c, device: torch.device):
        self.data = data
        self.aug = BatchAugment(pad=data.pad if c.pad is None else c.pad,
                                flip=data.flip if c.flip is None else c.flip, cutout=c.cutout)
        self.images, self.labels = data.images.to(device), data.labels.to(device)
        self.pad_is_auto = c.pad is None

    @property
    def flip(self) -> bool:
        return self.aug.flip

    def begin_epoch(self, *args) -> None:
        pass

    def choose_pad(self, epochs: float) -> int | None:
        """data.pad unset: the dataset's pad-and-crop, or none for a run shorter than SHORT_RUN_EPOCHS."""
        return (0 if epochs < SHORT_RUN_EPOCHS else self.data.pad) if self.pad_is_auto else None

    def set_pad(self, pad: int) -> None:
        if self.pad_is_auto:
            self.aug = dataclasses.replace(self.aug, pad=pad)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.aug.sample(n, generator)

    def batch(self, idx: torch.Tensor, params: dict, mean: torch.Tensor, std: torch.Tensor):
        sel = idx.to(self.images.device)
        x = normalize(self.aug.crop_flip(self.images[sel], params), mean, std)  # (B, C, H, W)
        return self.aug.apply_cutout(x, params), self.labels[sel]


class StreamedBatches:
    """Batches of a streamed set (StreamSet, ShardSet): DataLoader workers decode and augment this rank's
    micro-batches as uint8 (begin_epoch starts them); they are normalised on the device."""

    def __init__(self, data, c, device: torch.device):
        self.data, self.device, self.flip = data, device, c.stream_flip
        self.batches = None

    def begin_epoch(self, seed: int, epoch: int, start: int, batch_size: int, d: Dist, accum: int) -> None:
        self.batches = self.data.train_batches(seed, epoch, start, batch_size, d.rank, d.world, accum)

    def choose_pad(self, epochs: float) -> None:
        return None  # the workers crop

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}  # the workers draw their own crops

    def batch(self, idx: torch.Tensor, params: dict, mean: torch.Tensor, std: torch.Tensor):
        """The loader's next micro-batch; it must hold the images `idx` (folders) or as many (shards)."""
        # Outside an epoch (a probe such as precision.measure_channels_last): the first images.
        item = next(self.batches) if self.batches is not None else self.data.first_batch(len(idx))
        mismatch = ("idx" in item and not torch.equal(item["idx"], idx)) or len(item["y"]) != len(idx)
        if self.batches is not None and mismatch:
            raise DataError(f"the streamed batch does not match the trainer's ({len(item['y'])} images for "
                            f"{len(idx)}); the data changed while training?")
        x = item["x"].to(self.device, non_blocking=True)
        return normalize(x, mean, std), item["y"].to(self.device, non_blocking=True)


class ClassificationTask(Task):
    NAME = "classification"
    SUMS = ("loss", "errors", "images")
    METRICS = ("test_err", "test_loss", "test_top5_err", "train_err", "train_loss")
    PANELS = (Panel("loss", "cross-entropy", (("train", "train_loss"), ("test", "test_loss"))),
              Panel("top-1 error", "error (%)", (("train", "train_err"), ("test", "test_err")), scale=100))

    @classmethod
    def load(cls, cfg: TrainConfig) -> tuple[TaskData, TrainConfig, dict[str, tuple]]:
        """The data, with data.stream resolved to the form it took and, for a TF-slim 1001-class model on
        ImageNet data, the labels shifted by one (class 0 = background)."""
        train, test = load_data(cfg)
        choices = {}
        streamed = not isinstance(train, ImageSet)
        if cfg.data.stream == "auto":
            form = "on" if streamed else "off"
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stream=form))
            choices["data.stream"] = (form, "streamed from the files" if streamed else "held in memory")
        if streamed and _background(cfg.model, train):
            train, test = with_background(train), with_background(test)
            choices["labels"] = ("ImageNet + 1", f"model.arch={cfg.model.arch} has 1001 classes: class 0 = "
                                                 "background, as TF-slim's")
        return TaskData(train, test), cfg, choices

    @classmethod
    def log_choices(cls, choices: dict[str, tuple], data: TaskData) -> None:
        if "labels" in choices:
            log.info("labels: %s (%s)", *choices["labels"])

    def __init__(self, cfg: TrainConfig, data: TaskData, device: torch.device):
        super().__init__(cfg, data, device)
        t, c = self.train_set, cfg.data
        self.source = (InMemoryBatches if isinstance(t, ImageSet) else StreamedBatches)(t, c, device)
        self.mix = MixAugment(c.mixup_alpha, c.cutmix_alpha, t.num_classes)
        self.auto_pad: int | None = None  # data.pad unset: what on_plan chose
        self.mean, self.std = torch.tensor(t.mean, device=device), torch.tensor(t.std, device=device)
        self.class_weights = class_weights(c.class_weights, t)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)

    @classmethod
    def check_micro_batch(cls, cfg: TrainConfig, n: int) -> None:
        if (cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0) and n % 2:
            raise config_error(f"data.mixup_alpha / data.cutmix_alpha mix images in pairs; each process's "
                               f"micro-batch of {n} images must be even", ("data.batch_size", "data.mixup_alpha",
                                                                           "data.cutmix_alpha"))

    def begin_epoch(self, epoch: int, start: int, d: Dist) -> None:
        self.source.begin_epoch(self.cfg.run.seed, epoch, start, self.cfg.data.batch_size, d, self.cfg.optim.grad_accum)

    def build_model(self) -> torch.nn.Module:
        m, t = self.cfg.model, self.train_set
        # model.kwargs.num_classes may repeat the data's count (1001 asks ImageNet data for its background form)
        kwargs = {k: v for k, v in m.kwargs.items() if not (k == "num_classes" and v == t.num_classes)}
        model = build(m.arch, "model.arch", kwargs, num_classes=t.num_classes, in_chans=t.in_chans)
        finetune.freeze_stages(model, m.freeze_stages)  # fresh and resumed runs alike
        return model

    def init_weights(self, model: torch.nn.Module) -> None:
        """model.init: its weights (a new head when the classes differ) and, when its card has them
        for as many channels, its normalisation: the backbone learnt its features on inputs scaled so.
        The image size stays the data's (data.image_size for folders)."""
        if self.cfg.model.init is None:
            return
        pre = finetune.init_from(model, self.cfg.model.init, self.cfg.model.arch,
                                 self.train_set.class_names).card.preprocessing
        if pre is not None and pre.channels == self.train_set.in_chans:
            self.set_normalization(pre.mean, pre.std)
            log.info("normalising with the init weights' mean %s, std %s", list(pre.mean), list(pre.std))

    def set_normalization(self, mean, std) -> None:
        """Normalise training and evaluation inputs (and the saved card) with these per-channel values."""
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.train_set = dataclasses.replace(self.train_set, mean=mean, std=std)
        self.eval_set = dataclasses.replace(self.eval_set, mean=mean, std=std)
        self.mean, self.std = torch.tensor(mean, device=self.device), torch.tensor(std, device=self.device)

    def state_dict(self) -> dict:
        w = self.class_weights
        return {"mean": list(self.train_set.mean), "std": list(self.train_set.std), "auto_pad": self.auto_pad,
                "class_weights": None if w is None else w.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mean") is not None:  # checkpoints from before fine-tuning keep the data's own values
            self.set_normalization(state["mean"], state["std"])
        if state.get("auto_pad") is not None:  # the run's own decision (on_plan), not one remade from the resume
            self._set_auto_pad(int(state["auto_pad"]))
        if state.get("class_weights") is not None:  # as the run began with them, even if the data changed since
            self.class_weights = torch.tensor(state["class_weights"], device=self.device)

    def on_plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """data.pad unset (in memory): decided once, when the schedule's length is first known (a budgeted run:
        at the planner's first estimate); see InMemoryBatches.choose_pad."""
        if self.auto_pad is not None:
            return
        epochs = total_steps / max(1, steps_per_epoch)
        pad = self.source.choose_pad(epochs)
        if pad is None:
            return
        self._set_auto_pad(pad)
        if pad != self.train_set.pad:
            log.info("data.pad = 0 (auto: %.1f epochs planned; random crops pay off from %d epochs on, shorter runs "
                     "learn more from the images as they are; set data.pad to choose)", epochs, SHORT_RUN_EPOCHS)

    def _set_auto_pad(self, pad: int) -> None:
        self.auto_pad = pad
        self.source.set_pad(pad)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # The mixing draws come after the in-memory ones, so runs without mixing draw exactly what they drew
        # before.
        params = self.source.sample(n, generator)
        return {**params, **self.mix.sample(n, generator)} if self.mix.enabled else params

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.batch(idx, params, self.mean, self.std)
        return self.mix.apply(x, y, params) if self.mix.enabled else (x, y)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # y: class indices (B,), or soft targets (B, K) under MixUp/CutMix
        return F.cross_entropy(out.float(), y, weight=self.class_weights,
                               label_smoothing=self.cfg.optim.label_smoothing)

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        n = torch.tensor(len(y), dtype=torch.float64, device=y.device)
        hard = y.argmax(1) if y.dim() == 2 else y  # a mixed target counts as its larger part
        return torch.stack([loss.double() * n, (out.argmax(1) != hard).sum().double(), n])

    def train_metrics(self, sums: torch.Tensor) -> dict:
        n = max(1.0, float(sums[2]))
        return {"train_loss": float(sums[0]) / n, "train_err": float(sums[1]) / n}

    def progress(self, sums: torch.Tensor) -> dict[str, str]:
        n = max(1.0, float(sums[2]))
        return {"loss": f"{float(sums[0]) / n:.3f}", "acc": f"{1 - float(sums[1]) / n:.3f}"}

    def eval_flip(self) -> bool:
        """Does the final evaluation add flip-TTA? data.eval_tta; auto: when training flips the images."""
        c = self.cfg.data
        if c.eval_tta != "auto":
            return c.eval_tta == "flip"
        return self.source.flip

    def final_eval_passes(self) -> int:
        return 2 if self.eval_flip() else 1

    def evaluate(self, model: torch.nn.Module, d: Dist, final: bool = False) -> dict:
        c, r = self.cfg.data, self.cfg.run
        flip = final and self.eval_flip()
        ev = evaluate(model, self.eval_set, batch_size=c.eval_batch_size, amp=r.amp, channels_last=r.channels_last,
                      d=d, flip=flip)
        row = {"test_loss": ev["loss"], "test_err": 1 - ev["top1"], "test_top5_err": 1 - ev["top5"]}
        if flip:
            row.update(test_loss_flip=ev["flip"]["loss"], test_err_flip=1 - ev["flip"]["top1"])
        return row

    def card(self, row: dict) -> dict:
        t = self.train_set
        metrics = {"test_top1_err": row["test_err"]}
        if "test_err_flip" in row:
            metrics["test_top1_err_flip_tta"] = row["test_err_flip"]
        return {"class_names": t.class_names, "preprocessing": t.preprocessing(), "metrics": metrics}

    def describe(self) -> str:
        return f"{self.cfg.model.arch} on {self.cfg.data.name}: {len(self.train_set)} images"

    def summary(self, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} err {100 * row['train_err']:.2f}% | test loss "
                f"{row['test_loss']:.4f} err {100 * row['test_err']:.2f}%")

    def final_summary(self, row: dict) -> str:
        text = f"test error {100 * row['test_err']:.2f}% (top-1 accuracy {100 * (1 - row['test_err']):.2f}%"
        if "test_err_flip" in row:
            text += f"; with flip-TTA {100 * (1 - row['test_err_flip']):.2f}%"
        return text + ")"


def _background(m, train) -> bool:
    """TF-slim layouts have 1001 outputs, class 0 the background: ImageNet data then gets labels + 1."""
    if train.info.get("kind") != "imagenet" or train.num_classes != 1000:
        return False
    k = m.kwargs.get("num_classes") if "num_classes" in m.kwargs else model_defaults(m.arch)["num_classes"]
    return k == 1001


def class_weights(spec: str, train) -> torch.Tensor | None:
    """data.class_weights as a (K,) float32 tensor: None for "none"; "auto": N / (K n_k) over the training
    split's labels (a class without images gets the largest weight of the others); else a JSON file of K
    positive numbers."""
    k = train.num_classes
    if spec == "none":
        return None
    if spec == "auto":
        labels = getattr(train, "labels", None)
        if labels is None:
            raise config_error("data.class_weights=auto needs the training labels up front, which tar shards do not "
                               "list; give a JSON file of one weight per class", ("data.class_weights",))
        counts = torch.bincount(torch.as_tensor(labels).long(), minlength=k).double()
        w = counts.sum() / (k * counts.clamp_min(1))
        w[counts == 0] = w[counts > 0].max()
        return w.float()
    try:
        values = json.loads(Path(spec).read_text())
    except FileNotFoundError:
        raise config_error(f"data.class_weights={spec}: no such file; give none, auto or a JSON list of {k} "
                           "weights", ("data.class_weights",), cls=MissingFileError) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise config_error(f"data.class_weights={spec}: cannot read it as JSON ({e})", ("data.class_weights",)) \
            from None
    ok = isinstance(values, list) and len(values) == k and all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1e6 for v in values)
    if not ok:
        raise config_error(f"data.class_weights={spec}: give a JSON list of {k} positive numbers (one per class: "
                           f"{', '.join(train.class_names[:5])}{', ...' if k > 5 else ''})", ("data.class_weights",))
    return torch.tensor(values, dtype=torch.float32)
