"""Training runs with the extra measurements a reproduction needs, added through a trainer hook.

The trainer's config already covers the rest: a held-out validation split taken from the end of the
training set (`data.holdout`, the papers' 45k/5k CIFAR-10 split), evaluation on the first N images only
(`data.eval_subset`: a slow CPU cannot afford 10k test images per epoch for four models), and stopping
early while every step keeps the learning rate of the full schedule (`schedule.max_steps`).

What the `Probe` hook adds after every epoch:
  * an eval-mode pass over the first `train_probe` training images (`train_eval_err`, `train_eval_loss`),
    next to the trainer's running training error (the error on the augmented training batches, in
    train mode);
  * the row, appended to RUN_DIR/reproduce_metrics.jsonl and kept in `Probe.rows` (a resumed run first
    cuts the file back to its checkpoint's epochs and starts from those rows).
"""

from __future__ import annotations

from pathlib import Path

from resnetkit.train import TrainConfig, Trainer, train
from resnetkit.train.evaluate import evaluate
from resnetkit.train.report import append_metrics, read_metrics, truncate_metrics

HISTORY = "reproduce_metrics.jsonl"  # the trainer's rows plus the probe's, one line per epoch


class Probe:
    """Trainer hook (classification): the eval-mode training-subset probe and the history file."""

    def __init__(self, train_probe: int = 0):
        self.train_probe = train_probe
        self.rows: list[dict] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.resumed and trainer.d.main:
            truncate_metrics(trainer.run_dir.path / HISTORY, trainer.epoch)
        self.rows = read_history(trainer.run_dir.path) if trainer.resumed else []

    def on_epoch_end(self, trainer: Trainer, row: dict) -> dict:
        if self.train_probe:
            cfg = trainer.cfg
            probe = trainer.task.train_set.subset(self.train_probe)
            ev = evaluate(trainer.eval_model(), probe, batch_size=cfg.data.eval_batch_size, amp=cfg.run.amp,
                          channels_last=cfg.run.channels_last, d=trainer.d)
            row = {**row, "train_eval_err": 1 - ev["top1"], "train_eval_loss": ev["loss"]}
        self.rows.append(row)
        if trainer.d.main:
            append_metrics(trainer.run_dir.path / HISTORY, row)
        return row


def run(cfg: TrainConfig, *, train_probe: int = 0, resume: bool = False) -> tuple[dict, list[dict]]:
    """Train `cfg` with the probe (resume: continue the run in cfg.run.out); returns (the trainer's result,
    the per-epoch rows)."""
    probe = Probe(train_probe)
    result = train(cfg, resume=resume, hooks=[probe])
    return result, probe.rows


def read_history(run_dir) -> list[dict]:
    """The rows of RUN_DIR/reproduce_metrics.jsonl (a torn last line dropped; see report.read_metrics)."""
    return read_metrics(Path(run_dir) / HISTORY)
