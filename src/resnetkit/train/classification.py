"""The classification task: an in-memory ImageSet (batched augmentation on the device) or a streamed set
(StreamSet, ShardSet: DataLoader workers decode uint8 batches), MixUp/CutMix on the device, cross-entropy."""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

from resnetkit.data import BatchAugment, ImageSet, MixAugment, StreamOptions, load_classification, normalize
from resnetkit.data.sources import with_background
from resnetkit.errors import ConfigError, DataError, MissingFileError
from resnetkit.models import model_defaults
from resnetkit.train import finetune
from resnetkit.train.config import TrainConfig, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.evaluate import evaluate
from resnetkit.train.report import Panel
from resnetkit.train.task import Task, build

log = logging.getLogger("resnetkit.train")


def stream_options(c) -> StreamOptions:
    """The streaming side of a ClassificationDataConfig (train_crop 0 means 224 when streamed)."""
    return StreamOptions(stream=c.stream, train_crop=c.train_crop or 224, eval_resize=c.eval_resize,
                         eval_crop=c.eval_crop, crop_min_scale=c.crop_min_scale,
                         flip=True if c.flip is None else c.flip, auto_augment=c.auto_augment,
                         random_erase=c.random_erase, draft=c.draft, workers=c.workers, val_path=c.val_path)


def load_data(cfg: TrainConfig):
    """(train, eval) sets as `cfg.data` asks, in memory (ImageSet) or streamed (resnetkit.data.sources): the
    hold-out is taken from the whole training split, before `subset` picks the first images of what is left;
    `eval_subset` keeps the first eval images."""
    c = cfg.data
    try:
        train, test = load_classification(c.name, c.data_dir, image_size=c.image_size, channels=c.channels,
                                          strict=c.strict, options=stream_options(c))
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


# Below this many planned epochs an unset data.pad means no pad-and-crop. Tuned on a 5,000-image validation split
# of Fashion-MNIST (benchmarks/time_to_accuracy.py --val 5000, 4.5 min = 6 epochs): pad 0 beat the dataset's pad 2.
SHORT_RUN_EPOCHS = 10


class ClassificationTask(Task):
    NAME = "classification"
    SUMS = ("loss", "errors", "images")
    PANELS = (Panel("loss", "cross-entropy", (("train", "train_loss"), ("test", "test_loss"))),
              Panel("top-1 error", "error (%)", (("train", "train_err"), ("test", "test_err")), scale=100))

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        self.train_set, self.eval_set = load_data(cfg)
        t, c = self.train_set, cfg.data
        self.streamed = not isinstance(t, ImageSet)
        if self.streamed:  # DataLoader workers decode this rank's micro-batches (begin_epoch starts them)
            self.batches = None
            if self._background():
                self.train_set, self.eval_set = with_background(t), with_background(self.eval_set)
                t = self.train_set
                log.info("model.arch=%s has 1001 classes: ImageNet labels + 1 (class 0 = background)", cfg.model.arch)
        else:
            self.aug = BatchAugment(pad=t.pad if c.pad is None else c.pad, flip=t.flip if c.flip is None else c.flip,
                                    cutout=c.cutout)
            # The whole uint8 split lives on the training device; batches are gathered and augmented there.
            self.images, self.labels = t.images.to(device), t.labels.to(device)
        self.mix = MixAugment(c.mixup_alpha, c.cutmix_alpha, t.num_classes)
        self.auto_pad: int | None = None  # data.pad unset: what on_plan chose
        self.mean, self.std = torch.tensor(t.mean, device=device), torch.tensor(t.std, device=device)

    def _background(self) -> bool:
        """TF-slim layouts have 1001 outputs, class 0 the background: ImageNet data then gets labels + 1."""
        m = self.cfg.model
        if self.train_set.info.get("kind") != "imagenet" or self.train_set.num_classes != 1000:
            return False
        k = m.kwargs.get("num_classes") if "num_classes" in m.kwargs else model_defaults(m.arch)["num_classes"]
        return k == 1001

    def check_micro_batch(self, n: int) -> None:
        if self.mix.enabled and n % 2:
            raise config_error(f"data.mixup_alpha / data.cutmix_alpha mix images in pairs; each process's "
                               f"micro-batch of {n} images must be even", ("data.batch_size", "data.mixup_alpha",
                                                                           "data.cutmix_alpha"))

    def begin_epoch(self, epoch: int, start: int, d: Dist) -> None:
        if self.streamed:
            c = self.cfg.data
            self.batches = self.train_set.train_batches(self.cfg.run.seed, epoch, start, c.batch_size, d.rank,
                                                        d.world, self.cfg.optim.grad_accum)

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
        return {"mean": list(self.train_set.mean), "std": list(self.train_set.std), "auto_pad": self.auto_pad}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mean") is not None:  # checkpoints from before fine-tuning keep the data's own values
            self.set_normalization(state["mean"], state["std"])
        if state.get("auto_pad") is not None:  # the run's own decision (on_plan), not one remade from the resume
            self._set_auto_pad(int(state["auto_pad"]))

    def on_plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """data.pad unset: the dataset's pad-and-crop, or none for a run shorter than SHORT_RUN_EPOCHS; decided
        once, when the schedule's length is first known (a budgeted run: at the planner's first estimate)."""
        if self.streamed or self.cfg.data.pad is not None or self.auto_pad is not None:
            return
        epochs = total_steps / max(1, steps_per_epoch)
        pad = 0 if epochs < SHORT_RUN_EPOCHS else self.train_set.pad
        self._set_auto_pad(pad)
        if pad != self.train_set.pad:
            log.info("data.pad = 0 (auto: %.1f epochs planned; random crops pay off from %d epochs on, shorter runs "
                     "learn more from the images as they are; set data.pad to choose)", epochs, SHORT_RUN_EPOCHS)

    def _set_auto_pad(self, pad: int) -> None:
        self.auto_pad = pad
        if not self.streamed and self.cfg.data.pad is None:
            self.aug = dataclasses.replace(self.aug, pad=pad)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # Streamed images draw their own crops in the workers; the mixing draws come after the in-memory
        # ones, so runs without mixing draw exactly what they drew before.
        params = {} if self.streamed else self.aug.sample(n, generator)
        return {**params, **self.mix.sample(n, generator)} if self.mix.enabled else params

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.streamed:
            x, y = self._next_streamed(idx)
        else:
            sel = idx.to(self.device)
            x = normalize(self.aug.crop_flip(self.images[sel], params), self.mean, self.std)  # (B, C, H, W)
            x, y = self.aug.apply_cutout(x, params), self.labels[sel]
        return self.mix.apply(x, y, params) if self.mix.enabled else (x, y)

    def _next_streamed(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loader's next micro-batch, normalised on the device; it must hold the images `idx` (folders) or
        as many (shards)."""
        # Outside an epoch (a probe such as precision.measure_channels_last): the first images.
        item = next(self.batches) if self.batches is not None else self.train_set.first_batch(len(idx))
        mismatch = ("idx" in item and not torch.equal(item["idx"], idx)) or len(item["y"]) != len(idx)
        if self.batches is not None and mismatch:
            raise DataError(f"the streamed batch does not match the trainer's ({len(item['y'])} images for "
                            f"{len(idx)}); the data changed while training?")
        x = item["x"].to(self.device, non_blocking=True)
        return normalize(x, self.mean, self.std), item["y"].to(self.device, non_blocking=True)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # y: class indices (B,), or soft targets (B, K) under MixUp/CutMix
        return F.cross_entropy(out.float(), y, label_smoothing=self.cfg.optim.label_smoothing)

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
        return stream_options(c).flip if self.streamed else self.aug.flip

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
