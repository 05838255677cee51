"""The one training loop: train(config) -> Trainer(prepare(config)).fit(), for every task.

resnetkit.train.prepare makes the run (config resolved once, data, task, model); the Trainer only trains it.
A task adapter (resnetkit.train.task.Task: ClassificationTask, SegmentationTask) supplies the data, the
model, batches, the loss and the metrics; the Trainer owns the rest. One precision path (autocast on or
off), one DDP wrapping place (distributed.wrap), and an unwrapped `self.model` for saving, EMA and
evaluation. The checkpoint holds everything needed to continue the run bit for bit: model, optimizer,
EMA, step, data position, this epoch's sums, schedule length, the task's own state and every RNG; the
data order itself is a function of (seed, epoch), see resnetkit.data.loader.

Experiments add to a run through hooks, objects with any of these methods (every rank calls them, so
they may evaluate with `d=trainer.d`; only `trainer.d.main` should write files):
    on_step(trainer)              after each optimizer step
    on_epoch_end(trainer, row)    after each evaluation; returns the row to record (add keys to it)
    on_fit_start(trainer)         once, after the run directory is ready (a resumed run: at its checkpoint)

Every file goes through the run directory (resnetkit.train.rundir.RunDir): the marker and config.json
first, then one all-or-nothing commit per epoch with the checkpoint last; a disk error is one RunWriteError
naming the file and what was kept.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from resnetkit.data.loader import derived_generator, epoch_batches, shard, steps_per_epoch
from resnetkit.errors import CheckpointError, UserError
from resnetkit.train import checkpoint, distributed
from resnetkit.train.config import TrainConfig
from resnetkit.train.evaluate import autocast
from resnetkit.train.loggers import Loggers
from resnetkit.train.optim import EMA, build_optimizer
from resnetkit.train.prepare import PreparedRun, prepare
from resnetkit.train.rundir import BEST, CHECKPOINT, WEIGHTS, RunDir
from resnetkit.train.schedule import BudgetPlanner, lr_at
from resnetkit.train.selection import Selection
from resnetkit.weights import save_weights

log = logging.getLogger("resnetkit.train")


class Trainer:
    """Train a PreparedRun (resnetkit.train.prepare), or a TrainConfig that it prepares here (`resume=True`:
    continue the run in its run.out)."""

    def __init__(self, run: PreparedRun | TrainConfig, *, resume: bool = False, hooks=(), clock=time.perf_counter):
        self.clock, self.t_start = clock, clock()
        run = run if isinstance(run, PreparedRun) else prepare(run, resume=resume)
        self.prepared, self.hooks, self.resumed = run, list(hooks), run.resumed
        cfg = self.cfg = run.cfg
        self.task, self.model, self.d = run.task, run.model, run.dist
        self.run_dir = RunDir(cfg.run.out, resumed=run.resumed)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.run.amp == "fp16")
        self.ema = EMA(self.model, cfg.optim.ema_decay, cfg.optim.ema_warmup) if cfg.optim.ema_decay > 0 else None
        self.spe = steps_per_epoch(len(self.task.train_set), cfg.data.batch_size)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # This epoch's training sums (task.SUMS, over all processes at a checkpoint) and seconds, saved so a
        # mid-epoch resume reports the same epoch metrics as the uninterrupted run.
        self.epoch_sums = torch.zeros(len(self.task.SUMS), dtype=torch.float64)
        self.epoch_seconds = 0.0
        self.total = self._initial_total()  # the schedule's length; the learning rates follow it
        self.selection = Selection.for_config(cfg)  # run.keep_best / run.early_stop, kept in the checkpoint
        self.loggers = Loggers(self.run_dir.path, cfg, self.d.main)  # run.log: TensorBoard, MLflow
        self.planner = None
        if run.state is not None:
            self._restore(run.state)
        elif cfg.schedule.budget_min > 0 and cfg.schedule.steps <= 0:
            # An evaluation image costs about a third of a training image (forward only).
            eval_guess = len(self.task.eval_set) / cfg.data.batch_size / 3
            self.planner = BudgetPlanner(60 * cfg.schedule.budget_min, self.spe, self.t_start, clock,
                                         eval_guess_steps=eval_guess, final_evals=self.task.final_eval_passes())
        if self.planner is None:  # the length is known now (a fixed run, or a resumed one's saved plan)
            self.task.on_plan(self.total, self.spe)
        # The one wrapping place: DDP (and SyncBatchNorm) for training, then optionally torch.compile.
        self.ddp_model = distributed.wrap(self.model, self.d, cfg.model.sync_bn)
        self.train_model = torch.compile(self.ddp_model) if cfg.run.compile else self.ddp_model
        self.stop_signal: int | None = None
        self.grad_norm = float("nan")  # the global gradient norm at the last logged step

    # -- set-up ------------------------------------------------------------------------------

    def _initial_total(self) -> int:
        s = self.cfg.schedule
        if s.steps > 0:
            return s.steps
        if s.budget_min > 0:
            return 2 * self.spe  # provisional, until the planner has measured the speed
        return max(1, round(s.epochs * self.spe))

    @property
    def stop_at(self) -> int:
        """The step training ends at: the schedule's end, or schedule.max_steps when that is sooner."""
        m = self.cfg.schedule.max_steps
        return min(self.total, m) if m > 0 else self.total

    def _restore(self, state: dict) -> None:
        path = self.run_dir.file(CHECKPOINT)
        try:
            self._load_state(state)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{path}: its state does not fit this run's config ({type(e).__name__}: "
                                  f"{checkpoint._first_line(e)})") from None
        self.run_dir.saved_step = self.step
        if self.d.main:
            log.info("resuming %s at step %d of %d (epoch %d, batch %d)", self.run_dir.path, self.step, self.stop_at,
                     self.epoch + 1, self.batch_in_epoch)

    def _load_state(self, state: dict) -> None:
        checkpoint.restore(self, state, self.run_dir.file(CHECKPOINT))

    def state_dict(self) -> dict:
        return checkpoint.trainer_state(self)

    def global_epoch_sums(self) -> torch.Tensor:
        """This epoch's sums over all processes (every rank calls this)."""
        return distributed.all_reduce_sum(self.epoch_sums.to(self.d.device).clone(), self.d).cpu()

    def save_checkpoint(self) -> None:
        """Every rank calls this (the epoch sums are summed over processes); rank 0 writes."""
        sums = self.global_epoch_sums()
        if self.d.main:
            self.run_dir.write_checkpoint({**self.state_dict(), "epoch_sums": sums})
            self.loggers.log(self.run_dir.flushed, None)

    # -- training ----------------------------------------------------------------------------

    def train_step(self, i: int, idx: torch.Tensor, lr: float | None = None) -> torch.Tensor:
        """One optimizer step on global batch `idx` (batch `i` of the epoch) at the schedule's learning rate (or
        `lr`: the range test); returns this rank's sums."""
        cfg, d, task = self.cfg, self.d, self.task
        lr = lr_at(self.step, self.total, cfg.optim.lr, cfg.schedule) if lr is None else lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)  # optim.head_lr_mult (checkpoints before it have none)
        # Draws for the whole global batch, so they do not depend on the number of processes.
        params = task.sample(len(idx), derived_generator(cfg.run.seed, self.epoch, i, 1))
        accum, parts = cfg.optim.grad_accum, d.world * cfg.optim.grad_accum
        sums = torch.zeros(len(task.SUMS), dtype=torch.float64, device=d.device)
        for micro in range(accum):
            part = d.rank * accum + micro
            x, y = task.batch(shard(idx, part, parts), {k: shard(v, part, parts) for k, v in params.items()})
            if cfg.run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # Gradients are all-reduced only on the last micro-batch.
            sync = self.ddp_model.no_sync() if d.world > 1 and micro < accum - 1 else nullcontext()
            with sync, autocast(d.device, cfg.run.amp):
                out = self.train_model(x)
                loss = task.loss(out, y)
                self.scaler.scale(loss / accum).backward()  # fp16 only scales; otherwise the loss as is
            sums += task.batch_sums(out.detach(), y, loss.detach())
        if cfg.optim.clip_grad_norm > 0 or (self.step + 1) % cfg.run.log_every == 0:
            self.scaler.unscale_(self.optimizer)  # fp16: the true gradients; the norm goes to steps.jsonl
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else float("inf")))
        self.scaler.step(self.optimizer)  # fp16: skips a step whose gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        return sums

    def _check_finite(self, sums: torch.Tensor) -> None:
        loss = float(sums[0])
        bad = torch.tensor(0.0 if math.isfinite(loss) else 1.0, device=self.d.device)
        if float(distributed.all_reduce_sum(bad, self.d)) > 0:
            saved = self.run_dir.saved_step
            kept = (f"the last good checkpoint {self.run_dir.file(CHECKPOINT)} (step {saved}) is kept"
                    if saved is not None else
                    "no checkpoint had been written yet, so the run's own files were removed")
            raise UserError(f"loss became {loss} at step {self.step} (epoch {self.epoch + 1}); training stopped; "
                            f"{kept}; lower optim.lr or add warm-up (schedule.warmup_steps)")

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step, save a checkpoint and return from fit (what SIGINT/SIGTERM do)."""
        self.stop_signal = signum

    def _stop_requested(self) -> bool:
        if self.d.world == 1:  # no collective, and no host-device sync on a GPU every step
            return self.stop_signal is not None
        flag = torch.tensor(1.0 if self.stop_signal else 0.0, device=self.d.device)
        return float(distributed.all_reduce_sum(flag, self.d)) > 0

    def run_epoch(self, bar) -> dict | None:
        """Train the rest of the current epoch; returns its train metrics, or None if a stop was requested."""
        cfg = self.cfg
        self.train_model.train()  # evaluation leaves the model in eval mode
        if self.batch_in_epoch == 0:
            self.epoch_sums, self.epoch_seconds = torch.zeros_like(self.epoch_sums), 0.0
        sums = self.epoch_sums.to(self.d.device).clone()  # this rank's, carried over from a mid-epoch resume
        t0, before = self.clock(), self.epoch_seconds
        window = torch.zeros_like(sums)  # the steps since the last logged one
        self.task.begin_epoch(self.epoch, self.batch_in_epoch, self.d)
        for i, idx in epoch_batches(len(self.task.train_set), cfg.data.batch_size, cfg.run.seed, self.epoch,
                                    self.batch_in_epoch):
            if self.step >= self.stop_at:
                break
            step_sums = self.train_step(i, idx)
            sums, window = sums + step_sums, window + step_sums
            self.batch_in_epoch = i + 1
            if self.planner is not None:
                self.total = self.planner.after_step(self.step, self.total)
                if self.planner.step_s is not None:  # measured: the length is an estimate, no longer a guess
                    self.task.on_plan(self.total, self.spe)
                bar.total = self.stop_at
            bar.update(1)
            for h in self.hooks:
                if hasattr(h, "on_step"):
                    h.on_step(self)
            if self.step % cfg.run.log_every == 0:
                self._check_finite(sums)
                rate = self.batch_in_epoch * cfg.data.batch_size / max(1e-9, before + self.clock() - t0)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(**self.task.progress(sums), lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
                if self.d.main:  # this rank's loss over the window: steps.jsonl, the per-step curve
                    self.run_dir.log_step({"step": self.step, "epoch": round(self.epoch + self.batch_in_epoch /
                                                                             self.spe, 4),
                                           "train_loss": self.task.train_metrics(window.cpu())["train_loss"],
                                           "lr": lr, "img_s": rate, "grad_norm": self.grad_norm})
                window.zero_()
            if self._stop_requested():
                self.epoch_sums, self.epoch_seconds = sums.cpu(), before + self.clock() - t0
                return None
        self._check_finite(sums)
        self.epoch_sums, self.epoch_seconds = sums.cpu(), before + self.clock() - t0
        everyone = distributed.all_reduce_sum(sums, self.d).cpu()
        images = self.batch_in_epoch * cfg.data.batch_size
        return {**self.task.train_metrics(everyone), "img_s": images / max(1e-9, self.epoch_seconds)}

    def eval_model(self) -> torch.nn.Module:
        """The model evaluated and saved: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, train_metrics: dict) -> dict:
        """Evaluate, record metrics and curves, checkpoint; called when an epoch (or the run) ends."""
        t0 = self.clock()
        distributed.broadcast_buffers(self.model, self.d)
        distributed.broadcast_buffers(self.eval_model(), self.d)
        ev = self.task.evaluate(self.eval_model(), self.d, final=self.step >= self.stop_at)
        if self.planner is not None:
            self.total = self.planner.after_eval(self.step, self.total, self.clock() - t0)
        if self.batch_in_epoch >= self.spe or self.step >= self.stop_at:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        row = {"epoch": self.epoch, "step": self.step, **{k: v for k, v in train_metrics.items() if k != "img_s"},
               **ev, "lr": self.optimizer.param_groups[0]["lr"], "img_s": train_metrics["img_s"],
               "time_s": self.clock() - self.t_start}
        for h in self.hooks:
            if hasattr(h, "on_epoch_end"):
                row = h.on_epoch_end(self, row)
        best = self.selection.update(row)
        sums = self.global_epoch_sums()
        if self.d.main:
            final = self.step >= self.stop_at or self.selection.stopped
            self.run_dir.commit(row, self.task.PANELS, {**self.state_dict(), "epoch_sums": sums},
                                (lambda path: self._save_weights(path, row)) if final else None,
                                (lambda path: self._save_weights(path, row, self.selection.card())) if best else None)
            self.loggers.log(self.run_dir.flushed, row)
            log.info("epoch %d step %d/%d | %s | lr %.4g | %.0f img/s | %.0f s", self.epoch, self.step, self.stop_at,
                     self.task.summary(row), row["lr"], row["img_s"], row["time_s"])
        return row

    def fit(self) -> dict:
        """Train to the end of the schedule (or until SIGINT/SIGTERM / request_stop); returns a summary dict:
        the last metrics row plus "step", "interrupted" and "exit_code" (128 + the signal when stopped)."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.d.main:
                self.run_dir.open(self.cfg.to_dict(), self.cfg.task, self.epoch, self.step)
                log.info("training %s, %d steps/epoch, %d steps, device %s x%d -> %s", self.task.describe(),
                         self.spe, self.stop_at, self.d.device, self.d.world, self.run_dir.path)
            self.loggers.start(self.step)
            for h in self.hooks:
                if hasattr(h, "on_fit_start"):
                    h.on_fit_start(self)
            show = self.d.main and sys.stderr.isatty()
            row = None
            with tqdm(total=self.stop_at, initial=self.step, disable=not show, unit="step", leave=False) as bar:
                while self.step < self.stop_at and not self.selection.stopped:
                    metrics = self.run_epoch(bar)
                    if metrics is None:
                        return self._interrupted()
                    row = self.end_epoch(metrics)
        except BaseException:
            if self.d.main:
                self.run_dir.discard_if_new()
            raise
        finally:
            self.loggers.close()
            for s, h in old.items():
                signal.signal(s, h)
        return self.finish(row)

    def _on_signal(self, signum, frame) -> None:
        self.request_stop(signum)

    def _interrupted(self) -> dict:
        self.save_checkpoint()
        signum = self.stop_signal or signal.SIGINT
        if self.d.main:
            log.warning("%s at step %d: checkpoint saved to %s; resume the run to continue",
                        signal.Signals(signum).name, self.step, self.run_dir.file(CHECKPOINT))
        return {"interrupted": True, "exit_code": 128 + signum, "step": self.step, "run_dir": str(self.run_dir.path)}

    def _save_weights(self, path, row: dict, best: dict | None = None) -> None:
        """A weights file (rank 0) with the task's card, the step count and the config (and for
        model_best.safetensors which evaluation it was best at)."""
        save_weights(self.eval_model(), path, **self.task.card(row),
                     source=f"resnetkit.train ({self.cfg.task}) -> {self.run_dir.path}",
                     extra={"steps": self.step, "wall_s": row["time_s"], "train_config": self.cfg.to_dict(),
                            "command": " ".join(sys.argv), **({"best": best} if best else {})})

    def finish(self, row: dict) -> dict:
        """The summary of a run that reached its end (its weights were written with the last checkpoint)."""
        if self.d.main:
            log.info("done: %s after %d steps in %.0f s; weights %s", self.task.final_summary(row), self.step,
                     row["time_s"], self.run_dir.file(WEIGHTS))
            if self.selection.best is not None:
                log.info("best %s %.4g at epoch %d (step %d): %s%s", self.selection.metric, self.selection.best,
                         self.selection.best_epoch, self.selection.best_step, self.run_dir.file(BEST),
                         "; stopped early" if self.selection.stopped else "")
        return {"interrupted": False, "exit_code": 0, "step": self.step, "run_dir": str(self.run_dir.path), **row}


def train(cfg: PreparedRun | TrainConfig, resume: bool = False, hooks=()) -> dict:
    """Build a Trainer from `cfg` (a PreparedRun, or a TrainConfig to prepare) and fit (see Trainer.fit for the
    result); tears the process group down afterwards."""
    try:
        trainer = Trainer(cfg, resume=resume, hooks=hooks)
        result = trainer.fit()
        # Rank 0 may still be writing files: a rank that tore gloo down first could abort at exit.
        distributed.barrier(trainer.d)
        return result
    finally:
        distributed.shutdown()
