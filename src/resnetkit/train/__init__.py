"""Training: a run is prepared once (`prepare`: config, data, automatic choices, task, model), then one loop
(`Trainer`, `train`) trains it, for every task; plus the task adapters, config dataclasses, the run
directory, checkpoints, schedules, distributed helpers and evaluation.

>>> from resnetkit.train import RunRequest, prepare, resolve, train
>>> run = prepare(RunRequest(task="segmentation", flags={"data": "data/shapes", "schedule.epochs": 5}))
>>> run.summary()["automatic"]  # what was chosen from the data and the machine, and why
>>> result = train(run)  # run.out: model.safetensors, metrics.jsonl, checkpoint.pt, config.json
>>> train(prepare(RunRequest(resume=True, out="runs/segment")))  # continue a stopped run, its saved config
>>> train(resolve(flags={"data.name": "digits", "schedule.epochs": 1}))  # a TrainConfig is prepared for you
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
from resnetkit.train.prepare import TASK_TYPES, PreparedRun, RunRequest, prepare
from resnetkit.train.rundir import RunDir, RunWriteError
from resnetkit.train.segmentation import SegmentationTask
from resnetkit.train.task import Task
from resnetkit.train.trainer import Trainer, train

__all__ = ["RESUMABLE", "TASK_TYPES", "ClassificationDataConfig", "ClassificationModelConfig", "ClassificationTask",
           "OptimConfig", "PreparedRun", "RunConfig", "RunDir", "RunRequest", "RunWriteError", "ScheduleConfig",
           "SegmentationDataConfig", "SegmentationModelConfig", "SegmentationTask", "Task", "TrainConfig", "Trainer",
           "evaluate", "evaluate_file", "evaluate_segmentation", "prepare", "resolve", "run_config", "train"]
