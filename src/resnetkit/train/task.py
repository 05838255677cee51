"""What a task adapter supplies to the one training loop (resnetkit.train.Trainer).

The Trainer owns everything a task does not change: the loop, precision, DDP, torch.compile, gradient
accumulation, checkpoints and exact resume, signals, budget planning, logging, metrics.jsonl, the
curves PNG and the final weights file. A task (ClassificationTask, SegmentationTask) owns its data,
its model, how a batch is made, the loss, its training sums, evaluation and what its weights file says.

Contract, in the order resnetkit.train.prepare and the Trainer use it:
  Task.load(cfg)               classmethod: read the data once -> (TaskData, cfg with the automatic values
                               the data decides filled in, {key: (value, why)} of those choices)
  Task.log_choices(choices, data)   classmethod: say them in the log (rank 0)
  Task(cfg, data, device)      the task for the final config: `train_set` (len() images) and `eval_set`
  Task.check_micro_batch(cfg, n)   refuse a per-process micro-batch of n images the model cannot train on
  build_model()                a new model on the CPU (the Trainer seeds the RNG first)
  init_weights(model)          fresh runs only: e.g. copy a backbone in; resumed runs get load_state_dict
  state_dict() / load_state_dict(state)   what the task must keep in the checkpoint (plain types)
  begin_epoch(epoch, start, d) before the Trainer takes batch `start` on of `epoch` (loader.epoch_batches):
                               a streaming task starts its DataLoader on this rank's micro-batches there
  sample(n, generator)         augmentation draws for a whole global batch of n images {name: (n, ...)}
  batch(idx, params)           (x, y) on the device for the images `idx` and their rows of `params`
  loss(out, y)                 the mean loss of a micro-batch (out: the model's raw, maybe bf16, output)
  batch_sums(out, y, loss)     float64 (len(SUMS),) on the device: sums over the micro-batch; SUMS[0] is
                               the loss summed over images, so the Trainer can spot a non-finite loss
  train_metrics(sums)          the epoch row's training entries from sums over the epoch (all processes)
  progress(sums)               short {name: text} for the progress bar (this process's sums)
  on_plan(total, per_epoch)    the schedule's length is known (choices that depend on it, e.g. data.pad)
  evaluate(model, d, final)    the epoch row's evaluation entries (every rank calls it; pass d= on); final:
                               the run's last evaluation (classification may add flip-TTA then)
  card(row)                    class_names, preprocessing and metrics for the final weights file
  PANELS                       the learning curves to draw (resnetkit.train.report.Panel)
  describe(), summary(row), final_summary(row)   text for the log
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from resnetkit.errors import ConfigError
from resnetkit.models import create_model
from resnetkit.train.config import TrainConfig, _short, config_error
from resnetkit.train.distributed import Dist
from resnetkit.train.report import Panel


def build(name: str, name_key: str, kwargs: dict, **required) -> torch.nn.Module:
    """create_model(name, **required, **kwargs), its errors naming the config key at fault: `name_key`
    (model.arch, model.backbone) for a bad name, model.kwargs for a bad extra argument."""
    try:
        return create_model(name, **required, **kwargs)
    except (ConfigError, TypeError) as e:
        if kwargs:
            try:
                create_model(name, **required)
            except (ConfigError, TypeError):
                pass
            else:  # the model builds without them: the extra arguments are at fault
                raise config_error(f"model.kwargs={_short(kwargs)}: {e}", ("model.kwargs",)) from None
        raise config_error(str(e), (name_key,)) from None


@dataclass
class TaskData:
    """What Task.load read: the training and evaluation sets, and what the task learnt from a look at them."""

    train: Any
    eval: Any
    summary: Any = None  # segmentation: resnetkit.data.segmentation.DataSummary
    notes: Any = None  # segmentation: every setting's value and reason, for the log's start block


class Task:
    """Base of the task adapters; see the module docstring for the contract."""

    NAME = ""
    SUMS: tuple[str, ...] = ()
    METRICS: tuple[str, ...] = ()  # the numbers of every evaluation row (what run.keep_best may name)
    PANELS: tuple[Panel, ...] = ()

    def __init__(self, cfg: TrainConfig, data: TaskData, device: torch.device):
        self.cfg, self.device = cfg, device
        self.train_set, self.eval_set = data.train, data.eval

    @classmethod
    def load(cls, cfg: TrainConfig) -> tuple[TaskData, TrainConfig, dict[str, tuple]]:
        raise NotImplementedError

    @classmethod
    def log_choices(cls, choices: dict[str, tuple], data: TaskData) -> None:
        """Log the automatic choices Task.load made (rank 0)."""

    @classmethod
    def check_micro_batch(cls, cfg: TrainConfig, n: int) -> None:
        """Raise ConfigError if the model cannot train on micro-batches of n images per process."""

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def init_weights(self, model: torch.nn.Module) -> None:
        """Fresh runs only: set weights that do not come from the seed (a pretrained backbone)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def begin_epoch(self, epoch: int, start: int, d: Dist) -> None:
        """Training is about to take global batches start, start + 1, ... of `epoch` (d: this process)."""

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_metrics(self, sums: torch.Tensor) -> dict:
        raise NotImplementedError

    def progress(self, sums: torch.Tensor) -> dict[str, str]:
        return {}

    def evaluate(self, model: torch.nn.Module, d: Dist, final: bool = False) -> dict:
        raise NotImplementedError

    def on_plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """The schedule's length is known (a fixed run: at the start; a budgeted one: the planner's first
        estimate, then every re-plan). Choices that depend on it are made here, once, and kept in state_dict."""

    def final_eval_passes(self) -> int:
        """What the final evaluation costs in evaluation passes (the budget planner keeps time for it)."""
        return 1

    def card(self, row: dict) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        return self.NAME

    def summary(self, row: dict) -> str:
        return ""

    def final_summary(self, row: dict) -> str:
        return self.summary(row)
