"""The training loop: build(config) -> Trainer.fit().

One precision path (autocast on or off), one DDP wrapping place (distributed.wrap), and an unwrapped
`self.model` for saving, EMA and evaluation. The checkpoint holds everything needed to continue the
run bit for bit: model, optimizer, EMA, step, data position, schedule length and every RNG; the data
order itself is a function of (seed, epoch), see resnetkit.data.loader.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from resnetkit.data import BatchAugment, ImageSet, load_dataset, normalize
from resnetkit.data.loader import derived_generator, epoch_batches, shard, steps_per_epoch
from resnetkit.errors import UserError
from resnetkit.train import checkpoint, distributed, report
from resnetkit.train.config import TrainConfig
from resnetkit.train.evaluate import autocast, evaluate
from resnetkit.train.optim import EMA, build_optimizer
from resnetkit.train.schedule import BudgetPlanner, lr_at
from resnetkit.weights.io import save_weights

log = logging.getLogger("resnetkit.train")

CHECKPOINT, WEIGHTS, METRICS, CURVES = "checkpoint.pt", "model.safetensors", "metrics.jsonl", "learning_curve.png"


def load_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    c = cfg.data
    train, test = load_dataset(c.name, c.data_dir, image_size=c.image_size, channels=c.channels, strict=c.strict)
    if c.subset:
        train = train.subset(c.subset)
    return train, test


def create_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> torch.nn.Module:
    import resnetkit

    try:
        return resnetkit.create_model(cfg.model.arch, num_classes=num_classes, in_chans=in_chans,
                                      **cfg.model.kwargs)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"cannot build model {cfg.model.arch!r} ({e}); `resnetkit models` lists the names") from e


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, clock=time.perf_counter):
        self.clock, self.t_start = clock, clock()
        self.run_dir = Path(cfg.run.out)
        state = checkpoint.load_checkpoint(self.run_dir / CHECKPOINT) if resume else None
        if state is not None:
            cfg = TrainConfig.from_dict(state["config"])  # a run continues with its own config
        elif (self.run_dir / CHECKPOINT).exists() or (self.run_dir / WEIGHTS).exists():
            raise UserError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                            "another --out")
        self.cfg = cfg
        self.d = distributed.init()
        self._set_determinism()
        self.train_set, self.test_set = load_data(cfg)
        self._check_batch()
        t = self.train_set
        self.aug = BatchAugment(pad=t.pad if cfg.data.pad is None else cfg.data.pad,
                                flip=t.flip if cfg.data.flip is None else cfg.data.flip, cutout=cfg.data.cutout)
        dev = self.d.device
        # The whole uint8 split lives on the training device; batches are gathered and augmented there.
        self.images, self.labels = t.images.to(dev), t.labels.to(dev)
        self.mean, self.std = torch.tensor(t.mean, device=dev), torch.tensor(t.std, device=dev)

        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = create_model(cfg, t.num_classes, t.in_chans).to(dev)
        if cfg.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.spe = steps_per_epoch(len(t), cfg.data.batch_size)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # This epoch's training sums (loss, errors, images, seconds), saved so a mid-epoch resume reports
        # the same epoch metrics as the uninterrupted run.
        self.epoch_sums = torch.zeros(4, dtype=torch.float64)
        self.total = self._initial_total()
        self.planner = None
        if state is not None:
            self._restore(state)
        elif cfg.schedule.budget_min > 0 and cfg.schedule.steps <= 0:
            # An evaluation image costs about a third of a training image (forward only).
            eval_guess = len(self.test_set) / cfg.data.batch_size / 3
            self.planner = BudgetPlanner(60 * cfg.schedule.budget_min, self.spe, self.t_start, clock,
                                         eval_guess_steps=eval_guess)
        # The one wrapping place: DDP (and SyncBatchNorm) for training, then optionally torch.compile.
        self.ddp_model = distributed.wrap(self.model, self.d, cfg.model.sync_bn)
        self.train_model = torch.compile(self.ddp_model) if cfg.run.compile else self.ddp_model
        self.stop_signal: int | None = None

    # -- set-up ------------------------------------------------------------------------------

    def _set_determinism(self) -> None:
        r = self.cfg.run
        if r.threads:
            torch.set_num_threads(r.threads)
        if r.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    def _check_batch(self) -> None:
        b, parts = self.cfg.data.batch_size, self.d.world * self.cfg.optim.grad_accum
        if b % parts:
            raise UserError(f"batch size {b} does not split into {self.d.world} processes x "
                            f"{self.cfg.optim.grad_accum} accumulation steps; choose a multiple of {parts}")
        if len(self.train_set) < b:
            raise UserError(f"the training set has {len(self.train_set)} images, fewer than one batch of {b}; "
                            "lower --batch-size")

    def _initial_total(self) -> int:
        s = self.cfg.schedule
        if s.steps > 0:
            return s.steps
        if s.budget_min > 0:
            return 2 * self.spe  # provisional, until the planner has measured the speed
        return max(1, round(s.epochs * self.spe))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.total = state["step"], state["total_steps"]
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.epoch_sums = state["epoch_sums"]
        checkpoint.set_rng_state(state["rng"])
        if self.d.main:
            report.truncate_metrics(self.run_dir / METRICS, self.epoch)
            log.info("resumed %s at step %d of %d (epoch %d, batch %d)", self.run_dir, self.step, self.total,
                     self.epoch + 1, self.batch_in_epoch)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "total_steps": self.total,
            "epoch": self.epoch,  # epochs completed
            "batch_in_epoch": self.batch_in_epoch,  # batches of the current epoch already trained
            "epoch_sums": self.epoch_sums,
            "rng": checkpoint.rng_state(),
            "torch_version": str(torch.__version__),
        }

    def save_checkpoint(self) -> None:
        if self.d.main:
            checkpoint.atomic_torch_save(self.state_dict(), self.run_dir / CHECKPOINT)

    # -- training ----------------------------------------------------------------------------

    def train_step(self, i: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step on global batch `idx`; returns this rank's (loss sum, errors, images)."""
        cfg, d = self.cfg, self.d
        lr = lr_at(self.step, self.total, cfg.optim.lr, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        # Draws for the whole global batch, so they do not depend on the number of processes.
        params = self.aug.sample(len(idx), derived_generator(cfg.run.seed, self.epoch, i, 1))
        accum, parts = cfg.optim.grad_accum, d.world * cfg.optim.grad_accum
        loss_sum = torch.zeros((), device=d.device)
        errors = torch.zeros((), dtype=torch.int64, device=d.device)
        n = 0
        for micro in range(accum):
            part = d.rank * accum + micro
            sel = shard(idx, part, parts).to(d.device)
            p = {k: shard(v, part, parts) for k, v in params.items()}
            x = self.aug.apply_cutout(normalize(self.aug.crop_flip(self.images[sel], p), self.mean, self.std), p)
            y = self.labels[sel]
            if cfg.run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # Gradients are all-reduced only on the last micro-batch.
            sync = self.ddp_model.no_sync() if d.world > 1 and micro < accum - 1 else nullcontext()
            with sync, autocast(d.device, cfg.run.amp):
                logits = self.train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
                (loss / accum).backward()
            loss_sum += loss.detach() * len(y)
            errors += (logits.detach().argmax(1) != y).sum()
            n += len(y)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss_sum, errors, n

    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if math.isfinite(float(loss_sum)) else 1.0, device=self.d.device)
        if float(distributed.all_reduce_sum(bad, self.d)) > 0:
            where = self.run_dir / CHECKPOINT
            kept = f"the last good checkpoint {where} (epoch {self.epoch}) is kept" if where.exists() else \
                "no checkpoint had been written yet"
            raise UserError(f"loss became {float(loss_sum)} at step {self.step} (epoch {self.epoch + 1}); "
                            f"training stopped; {kept}; lower --lr or add warm-up (--set schedule.warmup_steps=N)")

    def _stop_requested(self) -> bool:
        flag = torch.tensor(1.0 if self.stop_signal else 0.0, device=self.d.device)
        return float(distributed.all_reduce_sum(flag, self.d)) > 0

    def run_epoch(self, bar) -> dict | None:
        """Train the rest of the current epoch; returns its train metrics, or None if a signal stopped it."""
        cfg = self.cfg
        self.train_model.train()  # evaluation leaves the model in eval mode
        if self.batch_in_epoch == 0:
            self.epoch_sums.zero_()
        # Sums of this rank over this epoch, carried over from before a mid-epoch resume.
        loss_sum = self.epoch_sums[0].to(self.d.device, torch.float32)
        errors = self.epoch_sums[1].to(self.d.device, torch.int64)
        n, t0, t_before = int(self.epoch_sums[2]), self.clock(), float(self.epoch_sums[3])
        for i, idx in epoch_batches(len(self.images), cfg.data.batch_size, cfg.run.seed, self.epoch,
                                    self.batch_in_epoch):
            if self.step >= self.total:
                break
            l, e, k = self.train_step(i, idx)
            loss_sum, errors, n = loss_sum + l, errors + e, n + k
            self.batch_in_epoch = i + 1
            if self.planner is not None:
                self.total = self.planner.after_step(self.step, self.total)
                bar.total = self.total
            bar.update(1)
            if self.step % cfg.run.log_every == 0:
                self._check_finite(loss_sum)
                rate = n * self.d.world / max(1e-9, t_before + self.clock() - t0)
                bar.set_postfix(loss=f"{float(loss_sum) / n:.3f}", acc=f"{1 - float(errors) / n:.3f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.4f}", img_s=f"{rate:.0f}")
            if self._stop_requested():
                self.epoch_sums = torch.tensor([float(loss_sum), float(errors), n, t_before + self.clock() - t0],
                                               dtype=torch.float64)
                return None
        self._check_finite(loss_sum)
        sums = torch.stack([loss_sum.double(), errors.double(), torch.tensor(float(n), device=self.d.device,
                                                                            dtype=torch.float64)])
        distributed.all_reduce_sum(sums, self.d)
        total_n = max(1.0, float(sums[2]))
        return {"train_loss": float(sums[0]) / total_n, "train_err": float(sums[1]) / total_n,
                "img_s": total_n / max(1e-9, t_before + self.clock() - t0)}

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, train_metrics: dict) -> dict:
        """Evaluate, record metrics and curves, checkpoint; called when an epoch (or the run) ends."""
        cfg = self.cfg
        t0 = self.clock()
        distributed.broadcast_buffers(self.model, self.d)
        distributed.broadcast_buffers(self.eval_model(), self.d)
        ev = evaluate(self.eval_model(), self.test_set, batch_size=cfg.data.eval_batch_size, amp=cfg.run.amp,
                      channels_last=cfg.run.channels_last, d=self.d)
        eval_s = self.clock() - t0
        if self.planner is not None:
            self.total = self.planner.after_eval(self.step, self.total, eval_s)
        if self.batch_in_epoch >= self.spe or self.step >= self.total:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        row = {"epoch": self.epoch, "step": self.step, **{k: train_metrics[k] for k in ("train_loss", "train_err")},
               "test_loss": ev["loss"], "test_err": 1 - ev["top1"], "test_top5_err": 1 - ev["top5"],
               "lr": self.optimizer.param_groups[0]["lr"], "img_s": train_metrics["img_s"],
               "time_s": self.clock() - self.t_start}
        if self.d.main:
            report.append_metrics(self.run_dir / METRICS, row)
            report.plot_curves(report.read_metrics(self.run_dir / METRICS), self.run_dir / CURVES)
            log.info("epoch %d step %d/%d | train loss %.4f err %.2f%% | test loss %.4f err %.2f%% | lr %.4g | "
                     "%.0f img/s | %.0f s", self.epoch, self.step, self.total, row["train_loss"],
                     100 * row["train_err"], row["test_loss"], 100 * row["test_err"], row["lr"], row["img_s"],
                     row["time_s"])
        self.save_checkpoint()
        return row

    def fit(self) -> dict:
        """Train to the end of the schedule (or until SIGINT/SIGTERM); returns a summary dict."""
        if self.step >= self.total:
            raise UserError(f"{self.run_dir}: the run already finished ({self.step} steps); nothing to resume")
        if self.d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            log.info("training %s on %s: %d images, %d steps/epoch, %d steps, device %s x%d -> %s",
                     self.cfg.model.arch, self.cfg.data.name, len(self.train_set), self.spe, self.total,
                     self.d.device, self.d.world, self.run_dir)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        show = self.d.main and sys.stderr.isatty()
        row = None
        try:
            with tqdm(total=self.total, initial=self.step, disable=not show, unit="step", leave=False) as bar:
                while self.step < self.total:
                    metrics = self.run_epoch(bar)
                    if metrics is None:
                        return self._interrupted()
                    row = self.end_epoch(metrics)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self.finish(row)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _interrupted(self) -> dict:
        self.save_checkpoint()
        name = signal.Signals(self.stop_signal or signal.SIGINT).name
        if self.d.main:
            log.warning("%s at step %d: checkpoint saved to %s; continue with `resnetkit train --out %s --resume`",
                        name, self.step, self.run_dir / CHECKPOINT, self.run_dir)
        return {"interrupted": True, "exit_code": 128 + (self.stop_signal or signal.SIGINT), "step": self.step}

    def finish(self, row: dict) -> dict:
        t = self.train_set
        if self.d.main:
            save_weights(self.eval_model(), self.run_dir / WEIGHTS, class_names=t.class_names,
                         preprocessing=t.preprocessing(), source=f"resnetkit train -> {self.run_dir}",
                         extra={"test_top1_err": row["test_err"], "steps": self.step, "wall_s": row["time_s"],
                                "train_config": self.cfg.to_dict(), "command": " ".join(sys.argv)})
            log.info("done: test error %.2f%% (top-1 accuracy %.2f%%) after %d steps in %.0f s; weights %s",
                     100 * row["test_err"], 100 * (1 - row["test_err"]), self.step, row["time_s"],
                     self.run_dir / WEIGHTS)
        return {"interrupted": False, "exit_code": 0, "step": self.step, **row}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Build a trainer from `cfg` and fit; tears the process group down afterwards."""
    trainer = Trainer(cfg, resume=resume)
    try:
        result = trainer.fit()
        # Rank 0 may still be writing files: a rank that tore gloo down first could abort at exit.
        distributed.barrier(trainer.d)
        return result
    finally:
        distributed.shutdown(trainer.d)
