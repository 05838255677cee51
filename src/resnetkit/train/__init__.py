"""Training: one loop (`Trainer`, `train`) for every task, the task adapters, config dataclasses,
checkpoints, schedules, distributed helpers and evaluation.

>>> from resnetkit.train import resolve, train
>>> cfg = resolve(flags={"data.path": "data/shapes", "schedule.epochs": 5}, task="segmentation")
>>> result = train(cfg)  # run.out: model.safetensors, metrics.jsonl, checkpoint.pt, config.json
>>> train(run_config("runs/segment"), resume=True)  # continue a stopped run with its saved config
"""

from resnetkit.train.checkpoint import run_config
from resnetkit.train.classification import ClassificationTask
from resnetkit.train.config import (
    RESUMABLE,
    ClassificationDataConfig,
    ClassificationModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    SegmentationDataConfig,
    SegmentationModelConfig,
    TrainConfig,
    resolve,
)
from resnetkit.train.evaluate import evaluate, evaluate_file, evaluate_segmentation
from resnetkit.train.rundir import RunWriteError
from resnetkit.train.segmentation import SegmentationTask
from resnetkit.train.task import Task
from resnetkit.train.trainer import TASKS, Trainer, train

__all__ = ["RESUMABLE", "TASKS", "ClassificationDataConfig", "ClassificationModelConfig", "ClassificationTask",
           "OptimConfig", "RunConfig", "RunWriteError", "ScheduleConfig", "SegmentationDataConfig",
           "SegmentationModelConfig", "SegmentationTask", "Task", "TrainConfig", "Trainer", "evaluate", "evaluate_file",
           "evaluate_segmentation", "resolve", "run_config", "train"]
