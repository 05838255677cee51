"""Keeping the best epoch and stopping early: timm's `--eval-metric` with `model_best`, Lightning's
ModelCheckpoint and EarlyStopping, but with their state inside checkpoint.pt, so that a run killed and
resumed keeps the same best weights and stops at the same step as one that never stopped (Lightning's
tracker shows the trap: callback state lost on resume).

`run.keep_best` names a metric of the evaluation rows (test_err, test_loss, val_miou, ...): names ending in
_err or _loss are better lower, others higher. "auto" keeps the best by top-1 error (classification) or
mIoU (segmentation) when the run evaluates on a validation split, and nothing when it evaluates on the test
set (choosing an epoch by test error would report an optimistic test error); "none" keeps nothing.
`run.early_stop` = N stops after N evaluations in a row without improvement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from resnetkit.data.sources import DataSpec
from resnetkit.train.config import TrainConfig, config_error

LOWER_IS_BETTER = ("_err", "_loss")


def keep_best_metric(cfg: TrainConfig) -> tuple[str, str]:
    """(metric or "none", why) for run.keep_best "auto"."""
    if cfg.task == "segmentation":
        return "val_miou", f"segmentation evaluates on its val split ({cfg.data.val_split})"
    d = cfg.data
    if d.holdout > 0:
        return "test_err", f"evaluation on a validation split (data.holdout={d.holdout})"
    if d.val_path:
        return "test_err", f"evaluation on a validation split (data.val_path={d.val_path})"
    spec = DataSpec.parse(d.name)
    if spec.kind in ("imagenet", "shards"):
        return "test_err", f"evaluation on the {spec.kind} data's validation split"
    if spec.kind == "folder" and Path(spec.target, "train").is_dir() and Path(spec.target, "val").is_dir():
        return "test_err", f"evaluation on a validation folder ({Path(spec.target, 'val')})"
    return "none", "evaluation is on the test split: an epoch chosen by it would report an optimistic test error"


@dataclass
class Selection:
    """The best evaluation so far and the evaluations since; `update` after each evaluation."""

    metric: str | None  # None: keep nothing
    patience: int = 0  # evaluations without improvement before stopping (0: never)
    best: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    since: int = 0
    stopped: bool = False

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> Selection:
        metric = cfg.run.keep_best
        return cls(None if metric in ("none", "auto") else metric, cfg.run.early_stop)

    def update(self, row: dict) -> bool:
        """Record the evaluation `row`; True when it is the best so far (its weights are to be kept)."""
        if self.metric is None:
            return False
        if self.metric not in row or not isinstance(row[self.metric], int | float):
            numeric = [k for k, v in row.items() if isinstance(v, float)]
            raise config_error(f"run.keep_best={self.metric}: the run's evaluations have no such number; choose "
                               f"one of {', '.join(numeric)}", ("run.keep_best",))
        value = float(row[self.metric])
        lower = self.metric.endswith(LOWER_IS_BETTER)
        better = math.isfinite(value) and (self.best is None or (value < self.best if lower else value > self.best))
        if better:
            self.best, self.best_epoch, self.best_step, self.since = value, row["epoch"], row["step"], 0
        else:
            self.since += 1
        self.stopped = self.patience > 0 and self.since >= self.patience
        return better

    def card(self) -> dict:
        return {"metric": self.metric, "value": self.best, "epoch": self.best_epoch, "step": self.best_step}

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k in ("best", "best_epoch", "best_step", "since", "stopped"):
            setattr(self, k, state[k])
