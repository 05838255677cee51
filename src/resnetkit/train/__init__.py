"""Training: config dataclasses, the trainer, checkpoints, schedules, distributed helpers."""

from resnetkit.train.config import TrainConfig, resolve
from resnetkit.train.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "resolve", "train"]
