"""A Trainer with the extra measurements a reproduction needs, built on the public trainer.

What it adds to `resnetkit.train.Trainer`:
  * an eval-mode pass over a fixed training subset after every epoch (`train_probe`), next to the
    trainer's running training error (the error on the augmented training batches, in train mode);
  * evaluation on the first `test_subset` test images instead of the whole split (a slow CPU cannot
    afford 10k test images per epoch for four models);
  * a held-out validation split taken from the end of the training set (`val_split`, the papers'
    45k/5k CIFAR-10 split), which then replaces the test set;
  * `max_steps`: stop early while every step keeps the learning rate of the full schedule (the
    trainer shortens warm-up and places fractional milestones relative to the run's length).
"""

from __future__ import annotations

import dataclasses
import json

from resnetkit.data.loader import steps_per_epoch
from resnetkit.errors import UserError
from resnetkit.train import Trainer
from resnetkit.train.config import TrainConfig
from resnetkit.train.evaluate import evaluate

HISTORY = "reproduce_metrics.jsonl"  # the trainer's rows plus the probe's, one line per epoch


class ProbedTrainer(Trainer):
    def __init__(self, cfg: TrainConfig, *, train_probe: int = 0, test_subset: int = 0, val_split: int = 0,
                 max_steps: int = 0):
        super().__init__(cfg)
        if val_split:
            self._hold_out(val_split)
        self.schedule_total = self.total
        if max_steps:
            self.total = min(self.total, max_steps)
        if test_subset and test_subset < len(self.test_set):
            self.test_set = self.test_set.subset(test_subset)
        self.train_probe = self.train_set.subset(train_probe) if train_probe else None
        self.history: list[dict] = []

    def _hold_out(self, n: int) -> None:
        """Use the last n training images as the evaluation set and train on the rest."""
        t, b = self.train_set, self.cfg.data.batch_size
        if not 0 < n <= len(t) - b:
            raise UserError(f"--val-split {n}: the training set has {len(t)} images; keep at least one batch "
                            f"({b}) for training")
        self.test_set = dataclasses.replace(t, images=t.images[-n:], labels=t.labels[-n:])
        self.train_set = dataclasses.replace(t, images=t.images[:-n], labels=t.labels[:-n])
        dev = self.d.device
        # The trainer gathers batches from these device copies and sizes its epochs from them.
        self.images, self.labels = self.train_set.images.to(dev), self.train_set.labels.to(dev)
        self.spe = steps_per_epoch(len(self.train_set), b)
        self.total = self._initial_total()

    def train_step(self, i, idx):
        # The trainer stops at self.total and also reads it for the learning rate; give lr_at the
        # full schedule's length for the step, so a run cut short by max_steps has the full run's rates.
        stop, self.total = self.total, self.schedule_total
        try:
            return super().train_step(i, idx)
        finally:
            self.total = stop

    def end_epoch(self, train_metrics: dict) -> dict:
        row = super().end_epoch(train_metrics)
        if self.train_probe is not None:
            ev = evaluate(self.eval_model(), self.train_probe, batch_size=self.cfg.data.eval_batch_size,
                          amp=self.cfg.run.amp, channels_last=self.cfg.run.channels_last, d=self.d)
            row = {**row, "train_eval_err": 1 - ev["top1"], "train_eval_loss": ev["loss"]}
        self.history.append(row)
        if self.d.main:
            with (self.run_dir / HISTORY).open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row


def read_history(run_dir) -> list[dict]:
    from pathlib import Path

    p = Path(run_dir) / HISTORY
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
