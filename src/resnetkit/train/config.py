"""Training configuration: one frozen `TrainConfig` per run, dotted overrides (`optim.lr=0.2`), JSON/TOML files.

A TrainConfig has a `task` ("classification" or "segmentation") and five sections. `optim`,
`schedule` and `run` are the same for every task; `model` and `data` are the task's own:

    task            model                         data
    classification  ClassificationModelConfig     ClassificationDataConfig
    segmentation    SegmentationModelConfig       SegmentationDataConfig

`TrainConfig.for_task(task)` gives a task's defaults. The resolved config (task included) is written
to RUN_DIR/config.json and into every checkpoint, so a run directory says exactly what produced it and
a resumed run continues with it.

Every value is checked where it enters (`resolve`: types, ranges, finiteness, known names; `check`), and
each error is a ConfigError naming the key, carrying where the value came from (`Origin`: a config file,
an override string, a flag), so the CLI can say `--config FILE`, `--set KEY=VALUE` or the flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from resnetkit._helpers import did_you_mean, tomllib
from resnetkit.data.sources import AUTO_AUGMENTS, STREAM_MODES, StreamOptions
from resnetkit.errors import ConfigError, MissingFileError, UserError
from resnetkit.train.loggers import parse_loggers
from resnetkit.train.recipes import load_recipe

# -- the sections every task shares ---------------------------------------------------------------


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float | None = 0.1  # He et al. 2016 CIFAR: 0.1 at batch 128; None: the task chooses (segmentation)
    # > 0: the peak learning rate is lr_per_256 * data.batch_size / 256 (Goyal et al. 2017's linear scaling
    # rule; resolve() writes the result into optim.lr). Whichever of lr and lr_per_256 is set last wins.
    lr_per_256: float = 0.0
    head_lr_mult: float = 1.0  # the classifier's learning rate is this times the schedule's (fine-tuning)
    momentum: float = 0.9  # sgd
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw (Loshchilov & Hutter 2019)
    eps: float = 1e-8  # adamw
    nesterov: bool = False
    weight_decay: float = 1e-4
    wd_norm_and_bias: bool = False  # also decay BatchNorm weights and biases
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA of the weights
    ema_warmup: bool = True  # the decay ramps up from 0 (timm's ModelEmaV3 warm-up; resnetkit.train.optim.EMA)
    grad_accum: int = 1  # split each global batch into this many sequential micro-batches
    clip_grad_norm: float = 0.0  # > 0: clip the gradients' global L2 norm to this (torchvision's --clip-grad-norm)

    def check(self, cfg: TrainConfig) -> None:
        """The optim.* keys (optim.lr may be None only for segmentation: chosen from the data)."""
        o = self
        _choice(cfg, "optim.name", OPTIMIZERS)
        if o.lr is not None or cfg.task != "segmentation":  # segmentation: None is chosen from the data
            _in_range(cfg, "optim.lr", 0, lo_open=True)
        _in_range(cfg, "optim.lr_per_256", 0)
        _in_range(cfg, "optim.head_lr_mult", 0, 1e6, lo_open=True)
        _in_range(cfg, "optim.momentum", 0, 1, hi_open=True)
        _require(len(o.betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in o.betas),
                 f"optim.betas={_short(list(o.betas))}: give two numbers in [0, 1), e.g. [0.9, 0.999]", "optim.betas")
        _in_range(cfg, "optim.eps", 0, 1, lo_open=True)
        _require(not o.nesterov or o.momentum > 0, f"optim.nesterov needs momentum; optim.momentum={o.momentum}",
                 "optim.nesterov", "optim.momentum")
        _in_range(cfg, "optim.weight_decay", 0)
        _in_range(cfg, "optim.label_smoothing", 0, 1, hi_open=True)
        _in_range(cfg, "optim.ema_decay", 0, 1, hi_open=True)
        _in_range(cfg, "optim.grad_accum", 1, MAX_BATCH)
        _in_range(cfg, "optim.clip_grad_norm", 0)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # step | cosine | onecycle
    epochs: float = 0.0  # length in epochs (used when steps == 0 and no budget)
    steps: int = 0  # length in optimizer steps; wins over epochs
    budget_min: float = 0.0  # fit the whole schedule into this wall-clock budget
    max_steps: int = 0  # stop after this many steps while the learning rates follow the full schedule (0 = off)
    warmup_steps: int = 0
    warmup: str = "linear"  # linear: ramp from 0; constant: hold warmup_lr (He et al. use 0.01 for ResNet-110)
    warmup_lr: float = 0.01
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: iterations, or fractions of the run when <= 1
    gamma: float = 0.1  # step: multiply by this at each milestone
    final_lr_frac: float = 0.0  # cosine: end at lr * this

    def check(self, cfg: TrainConfig) -> None:
        """The schedule.* keys."""
        s = self
        _choice(cfg, "schedule.name", SCHEDULES)
        _choice(cfg, "schedule.warmup", WARMUPS)
        _in_range(cfg, "schedule.epochs", 0, MAX_EPOCHS)
        for key in ("schedule.steps", "schedule.max_steps", "schedule.warmup_steps"):
            _in_range(cfg, key, 0, MAX_STEPS)
        _in_range(cfg, "schedule.budget_min", 0, 60 * 24 * 366)
        _require(s.epochs > 0 or s.steps > 0 or s.budget_min > 0,
                 "say how long to train: set schedule.epochs, schedule.steps or schedule.budget_min",
                 "schedule.epochs", "schedule.steps", "schedule.budget_min")
        _in_range(cfg, "schedule.warmup_lr", 0)
        _in_range(cfg, "schedule.gamma", 0, 1, lo_open=True)
        _in_range(cfg, "schedule.final_lr_frac", 0, 1)
        m = s.milestones
        _require(0 < len(m) <= 100 and all(math.isfinite(x) and x > 0 and (x <= 1 or x.is_integer()) for x in m),
                 f"schedule.milestones={_short(list(m))}: give 1 to 100 fractions of the run (0 < f <= 1) or step "
                 "numbers (whole numbers > 1)", "schedule.milestones")


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/train"
    seed: int = 0
    deterministic: bool = False
    # auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else
    # none (fp32); fp16: CUDA only, with a gradient scaler. A run records what auto resolved to.
    amp: str = "auto"  # auto | none | bf16 | fp16
    # auto: on a GPU by capability, on a CPU by timing a few steps each way at start-up (recorded, like amp)
    channels_last: bool | str = "auto"  # true | false | "auto"
    compile: bool = False
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 20  # steps between progress updates and non-finite checks
    # Keep model_best.safetensors by this evaluation metric (resnetkit.train.selection): auto = top-1 error or
    # mIoU when evaluating on a validation split, else none; or a metric name (test_err, test_loss, val_miou).
    keep_best: str = "auto"
    early_stop: int = 0  # stop after this many evaluations without improvement of run.keep_best (0 = never)
    log: str = ""  # experiment trackers, comma-separated: tensorboard, mlflow (resnetkit.train.loggers)
    mlflow_uri: str | None = None  # MLflow tracking store; None: sqlite:///RUN_DIR/mlflow.db

    def check(self, cfg: TrainConfig) -> None:
        """The run.* keys."""
        _plain_name(cfg, "run.out", "a folder for the run")
        _in_range(cfg, "run.seed", 0, 2**63, hi_open=True, whole=True)
        _choice(cfg, "run.amp", AMP_MODES)
        _choice(cfg, "run.channels_last", (True, False, "auto"))
        _in_range(cfg, "run.threads", 0, 1024, whole=True)
        _in_range(cfg, "run.log_every", 1, MAX_STEPS, whole=True)
        _plain_name(cfg, "run.keep_best", "auto, none or an evaluation metric, e.g. test_err or val_miou")
        _in_range(cfg, "run.early_stop", 0, MAX_STEPS, whole=True)
        try:
            parse_loggers(self.log)
        except ConfigError as e:
            raise config_error(str(e).removeprefix(f"run.log={self.log}: "), ("run.log",)) from None
        _require(self.early_stop == 0 or self.keep_best != "none",
                 f"run.early_stop={self.early_stop} needs a metric to watch; run.keep_best is none", "run.early_stop",
                 "run.keep_best")


# -- classification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationModelConfig:
    arch: str = "resnet20"
    kwargs: dict = field(default_factory=dict)  # extra create_model arguments; num_classes/in_chans come from data
    # Fine-tuning: start from one of our weights files or a pretrained catalogue tag (a new, randomly
    # initialised classifier when the class count differs); a resumed run takes its weights from the checkpoint.
    init: str | None = None
    freeze_stages: int = 0  # 0 none; N: the stem and stages 1..N frozen, their BatchNorm statistics too
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (GPU only)

    def check(self, cfg: TrainConfig) -> None:
        """The model.* keys of classification."""
        _check_kwargs(cfg)
        _plain_name(cfg, "model.arch", "a registered model name, e.g. resnet20")
        if cfg.model.init is not None:
            _plain_name(cfg, "model.init", "a weights file or a pretrained tag, e.g. resnet18.tv_in1k")
        _in_range(cfg, "model.freeze_stages", 0, 64, whole=True)


@dataclass(frozen=True)
class ClassificationDataConfig(StreamOptions):
    """The data section of a classification run: the dataset, batches and splits, in-memory augmentation, and
    (inherited, so the keys stay data.*) the image pipeline's own options, resnetkit.data.StreamOptions."""

    name: str = "fashion_mnist"  # as resnetkit.data.load_dataset takes it (fashion-mnist is the same set)
    data_dir: str | None = None
    batch_size: int = 128  # global: summed over processes and accumulation steps
    eval_batch_size: int = 500
    subset: int = 0  # train on the first N training images only (0 = all)
    holdout: int = 0  # evaluate on the last N training images instead of the test split, train on the rest
    eval_subset: int = 0  # evaluate on the first N images of the evaluation split only (0 = all)
    # The final evaluation also with flip-TTA (the image and its mirror; the row's test_err_flip): auto = when
    # training flips. Per-epoch evaluations stay single-view, so the curves compare across runs.
    eval_tta: str = "auto"  # auto | none | flip
    pad: int | None = None  # pad-and-crop pixels (in memory); None = the dataset's default (4 for 32 px, 2 for 28 px)
    cutout: int = 0
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = 0.0  # CutMix's Beta(alpha, alpha); 0 = off
    # Per-class weights of the loss, for imbalanced data: none; auto (inverse frequency in the training split,
    # N / (K n_k), so the mean weight per image is 1); or a JSON file holding one number per class
    class_weights: str = "none"

    def check(self, cfg: TrainConfig) -> None:
        """The data.* keys of classification, the image pipeline's (StreamOptions) among them."""
        d = self
        _check_batches(cfg)
        _plain_name(cfg, "data.name", "a dataset, e.g. fashion_mnist or folder:PATH")
        _require(d.data_dir is None or (d.data_dir.strip() != "" and "\0" not in d.data_dir),
                 f"data.data_dir={_short(d.data_dir)}: give a folder, or null for the default", "data.data_dir")
        _in_range(cfg, "data.holdout", 0, MAX_BATCH, whole=True)
        _in_range(cfg, "data.cutout", 0, 256, whole=True)
        if d.pad is not None:
            _in_range(cfg, "data.pad", 0, 256, whole=True)
        _in_range(cfg, "data.image_size", 8, MAX_PIXELS, whole=True)
        for key in ("data.train_crop", "data.eval_resize", "data.eval_crop"):
            _in_range(cfg, key, 0, MAX_PIXELS, whole=True)
        _choice(cfg, "data.auto_augment", AUTO_AUGMENTS)
        _in_range(cfg, "data.random_erase", 0, 1)
        for key in ("data.mixup_alpha", "data.cutmix_alpha"):
            _in_range(cfg, key, 0, 100)
        _choice(cfg, "data.stream", STREAM_MODES)
        _choice(cfg, "data.eval_tta", EVAL_TTA)
        _in_range(cfg, "data.workers", 0, 256, whole=True)
        _in_range(cfg, "data.crop_min_scale", 0, 1, lo_open=True)
        _require(d.val_path is None or (d.val_path.strip() != "" and "\0" not in d.val_path),
                 f"data.val_path={_short(d.val_path)}: give a folder, or null", "data.val_path")
        _choice(cfg, "data.channels", (1, 3))
        _plain_name(cfg, "data.class_weights", "none, auto or a JSON file of one weight per class")


# -- segmentation ------------------------------------------------------------------------------------


# None means "auto": resnetkit.train.seg_defaults chooses the value from a look at the data and the backbone
# before training and writes it into the run's config.json (so a resumed run uses exactly it).
@dataclass(frozen=True)
class SegmentationModelConfig:
    backbone: str | None = None  # auto: resnet20 (CIFAR stem) for small images, resnet18 for large ones
    head: str | None = None  # slim | aspp | deeplabv3plus; auto: aspp
    output_stride: int | None = None  # auto: the coarsest the backbone reaches that leaves >= 16 feature cells
    backbone_weights: str | None = None  # a classification weights file or a pretrained tag; logits dropped
    freeze_bn: bool = False  # backbone BN in eval mode (frozen statistics) while training
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (GPU only)
    kwargs: dict = field(default_factory=dict)  # more create_model arguments; auto: aspp_channels, aspp_rates
    loss: str | None = None  # ce | weighted | ohem; auto: see seg_defaults.choose_loss

    def check(self, cfg: TrainConfig) -> None:
        """The model.* keys of segmentation; None ("auto") passes, the resolved value is checked again after the
        data look."""
        m = self
        _check_kwargs(cfg)
        if m.backbone is not None:
            _plain_name(cfg, "model.backbone", "a registered backbone name, e.g. resnet18")
        if m.head is not None:
            _choice(cfg, "model.head", SEG_HEADS)
        if m.output_stride is not None:
            _choice(cfg, "model.output_stride", OUTPUT_STRIDES)
        if m.loss is not None:
            _choice(cfg, "model.loss", SEG_LOSSES)
        if m.backbone_weights is not None:
            _plain_name(cfg, "model.backbone_weights", "a weights file or a pretrained tag")


@dataclass(frozen=True)
class SegmentationDataConfig:
    path: str = ""  # VOC-layout or pairs-layout folder
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int | None = None  # global: summed over processes and accumulation steps; auto: from the crop
    eval_batch_size: int = 16
    crop_size: int | None = None  # auto: s*k+1 (output stride s), at most the images' median shorter side
    min_scale: float | None = None  # random scale range; auto: 0.75-1.25 when the crop holds the whole image,
    max_scale: float | None = None  # else DeepLab's 0.5-2.0
    flip: bool = True
    subset: int = 0  # train on the first N images only (0 = all)
    eval_subset: int = 0  # evaluate on the first N images of the val split only (0 = all)

    def check(self, cfg: TrainConfig) -> None:
        """The data.* keys of segmentation."""
        d = self
        _check_batches(cfg)
        if d.crop_size is not None:
            _in_range(cfg, "data.crop_size", 8, MAX_PIXELS, whole=True)
        for key in ("data.min_scale", "data.max_scale"):
            if _value(cfg, key) is not None:
                _in_range(cfg, key, 0, 8, lo_open=True)
        if d.min_scale is not None and d.max_scale is not None:
            _require(d.min_scale <= d.max_scale,
                     f"data.min_scale={d.min_scale}, data.max_scale={d.max_scale}: need min_scale <= max_scale",
                     "data.min_scale", "data.max_scale")
        _require(bool(d.path), "data.path is required: a VOC-layout folder (see resnetkit.data.shapes.make_shapes)",
                 "data.path")
        _plain_name(cfg, "data.path", "a VOC-layout or pairs-layout folder")
        for key in ("data.train_split", "data.val_split"):
            v = _value(cfg, key)
            _require(bool(v) and v not in (".", "..") and not any(c in v for c in "/\\\0"),
                     f"{key}={_short(v)}: give a split's name (ImageSets/Segmentation/NAME.txt), not a path", key)


# task -> (model section, data section, changed defaults of the shared sections)
TASK_CONFIGS = {
    "classification": (ClassificationModelConfig, ClassificationDataConfig, {}),
    # lr None: chosen from the batch size (seg_defaults.choose_lr); weight decay and warm-up as the shapes
    # benchmark found best from scratch (DeepLab's 1e-4 assumes an ImageNet backbone)
    "segmentation": (SegmentationModelConfig, SegmentationDataConfig,
                     {"optim": {"lr": None, "weight_decay": 5e-4}, "schedule": {"warmup_steps": 50},
                      "run": {"out": "runs/segment"}}),
}


@dataclass(frozen=True)
class TrainConfig:
    task: str = "classification"
    model: ClassificationModelConfig | SegmentationModelConfig = field(default_factory=ClassificationModelConfig)
    data: ClassificationDataConfig | SegmentationDataConfig = field(default_factory=ClassificationDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if not _is_task(self.task):
            raise config_error(f"task={_short(self.task)}: choose {' or '.join(TASK_CONFIGS)}", ("task",))
        model_cls, data_cls, _ = TASK_CONFIGS[self.task]
        if type(self.model) is not model_cls or type(self.data) is not data_cls:
            raise ConfigError(f"task={self.task!r} needs model: {model_cls.__name__} and data: {data_cls.__name__}, "
                              f"got {type(self.model).__name__} and {type(self.data).__name__}")

    @classmethod
    def for_task(cls, task: str = "classification") -> TrainConfig:
        """The defaults of `task`."""
        if not _is_task(task):
            raise config_error(f"task={_short(task)}: choose {' or '.join(TASK_CONFIGS)}", ("task",))
        model_cls, data_cls, changes = TASK_CONFIGS[task]
        return apply_nested(cls(task=task, model=model_cls(), data=data_cls()), changes)

    def check(self) -> None:
        """Every section's checks, in the order optim, schedule, run, model, data (see `check`)."""
        for section in ("optim", "schedule", "run", "model", "data"):
            getattr(self, section).check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of to_dict (a missing "task" means classification); every key is checked."""
        if not isinstance(d, dict):
            raise config_error(f"expected a table of sections, got {_short(d)}")
        return apply_nested(cls.for_task(d.get("task", "classification")), d)


SECTIONS = ("model", "data", "optim", "schedule", "run")

# What a resumed run may change: where its files and its dataset are, how it uses the machine, and where it
# stops (schedule.max_steps stops early while the learning rates follow the whole schedule, so moving it
# changes no step). Any other change would make the continued run differ from the one its checkpoint began
# (learning rates, data order, numerics), so it is refused by name.
RESUMABLE = ("run.out", "run.threads", "run.log_every", "data.data_dir", "data.workers", "schedule.max_steps",
             "run.log", "run.mlflow_uri")

# The allowed values, defined once: the checks below and the CLI's choices use these.
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "none", "bf16", "fp16")
SCHEDULES = ("step", "cosine", "onecycle")
WARMUPS = ("linear", "constant")
EVAL_TTA = ("auto", "none", "flip")
SEG_HEADS = ("slim", "aspp", "deeplabv3plus")
SEG_LOSSES = ("ce", "weighted", "ohem")
OUTPUT_STRIDES = (4, 8, 16, 32)
# string fields whose choices include "none"
NONE_IS_A_WORD = ("run.amp", "data.auto_augment", "data.eval_tta", "run.keep_best", "data.class_weights")

# Upper bounds that only stop a typo from asking for years of training or terabytes of memory.
MAX_STEPS = 10**9
MAX_EPOCHS = 10**6
MAX_PIXELS = 4096  # image_size, crop_size
MAX_BATCH = 2**31 - 1


def _is_task(task) -> bool:
    return isinstance(task, str) and task in TASK_CONFIGS


def _short(value, limit: int = 60) -> str:
    """repr(value), cut short: a hostile file's nested garbage must not fill the one error line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- where values come from ------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a config value came from: a `recipe` (text: its name), a config `file` (text: its path), an
    `override` string (text: as written, "optim.lr=0.2"), or a `flag`, a dotted key given to
    `resolve(flags=...)` (text: the key)."""

    kind: str
    text: str

    def label(self) -> str:
        """How the library names it in a message; flags need no label (the message names the key)."""
        return {"file": f"config file {self.short()}", "override": f"override {self.short()!r}",
                "recipe": f"recipe {self.short()}"}.get(self.kind, "")

    def short(self, limit: int = 80) -> str:
        """The text, cut short: an override of 10,000 brackets must not fill the one error line."""
        return self.text if len(self.text) <= limit else self.text[:limit - 3] + "..."


def config_error(detail: str, keys=(), origins=(), cls: type[UserError] = ConfigError) -> UserError:
    """A ConfigError (or `cls`) saying `detail`, prefixed with where the values came from.

    It carries `.detail` (the message without the origin), `.keys` (the dotted keys it is about) and
    `.origins` (Origin of each offending value that was set, not defaulted), so a caller such as the CLI
    can name the origin in its own words: `--config FILE`, `--set optim.lr=...`, `--lr`."""
    origins = tuple(dict.fromkeys(o for o in origins if o is not None))
    labels = [o.label() for o in origins if o.label()]
    e = cls(f"{', '.join(labels)}: {detail}" if labels else detail)
    e.detail, e.keys, e.origins = detail, tuple(keys), origins
    return e


def _relocated(e: UserError, origins) -> UserError:
    """The same error with `origins` attached (and named in its message)."""
    return config_error(getattr(e, "detail", str(e)), getattr(e, "keys", ()), origins, type(e))


# -- reading values --------------------------------------------------------------------------------

_TYPE_NAMES = {bool: "boolean (true or false)", int: "whole number", float: "number", str: "string",
               dict: "table of key = value"}


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if tp is tuple or typing.get_origin(tp) is tuple:
        return "list of numbers"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value) -> bool:
    """A finite number; an int too large for a float (10**400 from a JSON file) is not one."""
    return _number(value) and (abs(value) < 2**1023 if isinstance(value, int) else math.isfinite(value))


def _coerce(value, tp, key: str):
    """Convert a parsed value to the field's annotated type, or raise a ConfigError naming the key.

    Strict: a list is not a string, a boolean is not a number, 1.5 is not a whole number."""
    origin_tp = typing.get_origin(tp)
    if origin_tp in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a, key)
                except ConfigError:
                    continue  # the next type of the union (bool | str: true, false or "auto")
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if _number(value) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if _finite(value) or (isinstance(value, float) and not math.isfinite(value)):  # nan, inf: checked later
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if value is None and key in NONE_IS_A_WORD:  # `--set run.amp=none` parses as null but means the word
            return "none"
        if _number(value):  # --set run.out=2024 parses as a number
            return str(value)
    elif origin_tp is tuple or tp is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        if all(_finite(v) or (isinstance(v, float) and not math.isfinite(v)) for v in items):
            return tuple(float(v) for v in items)
    elif tp is dict or origin_tp is dict:
        if isinstance(value, dict):
            return value
    raise config_error(f"{key}={_short(value)} is not a valid {_type_name(tp)}", (key,))


def _field_types(section_cls) -> dict:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _all_keys(cfg: TrainConfig) -> list[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in _field_types(type(getattr(cfg, s)))]


def apply_nested(cfg: TrainConfig, d: dict, origins=()) -> TrainConfig:
    """Return cfg with the values of a nested dict {"optim": {"lr": 0.2}} replaced, checking every key
    and type (ConfigError naming the key, with a close match for a misspelt one).

    A "task" key must name cfg's own task (start from `TrainConfig.for_task` to change it)."""
    if not isinstance(d, dict):
        raise config_error(f"expected a table of sections, got {_short(d)}", (), origins)
    updates = {}
    for section, values in d.items():
        if section == "task":
            if values != cfg.task:
                raise config_error(f"task={_short(values)}, but the config it applies to is for task={cfg.task!r}",
                                   ("task",), origins)
            continue
        if section not in SECTIONS:
            hint = did_you_mean(str(section), SECTIONS, f"sections are task, {', '.join(SECTIONS)}")
            raise config_error(f"unknown section {_short(section)}; {hint}", (), origins)
        if not isinstance(values, dict):
            raise config_error(f"section {section!r} must be a table of key = value, got {_short(values)}", (),
                               origins)
        sec = getattr(cfg, section)
        types_ = _field_types(type(sec))
        changes = {}
        for k, v in values.items():
            if k not in types_:
                hint = did_you_mean(f"{section}.{k}", _all_keys(cfg), f"{section} has {', '.join(types_)}")
                raise config_error(f"unknown key {section}.{k} for task {cfg.task}; {hint}", (), origins)
            try:
                changes[k] = _coerce(v, types_[k], f"{section}.{k}")
            except ConfigError as e:
                raise _relocated(e, origins) from None
        updates[section] = dataclasses.replace(sec, **changes)
    return dataclasses.replace(cfg, **updates)


def parse_override(text: str) -> dict:
    """'optim.lr=0.2' -> {"optim": {"lr": 0.2}}; the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise config_error("expected SECTION.KEY=VALUE, e.g. optim.lr=0.2", (), (Origin("override", text),))
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw if raw.lower() not in ("none", "null") else None
    return {parts[0]: {parts[1]: value}}


MAX_CONFIG_BYTES = 1 << 20


def load_config_file(path: str) -> dict:
    """A JSON or TOML (by its .toml suffix) file holding a nested dict of sections (and optionally `task`)."""
    p, where = Path(path), (Origin("file", str(path)),)
    if not p.exists():
        raise config_error("no such file", (), where, MissingFileError)
    if not p.is_file():
        raise config_error("not a file", (), where)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise config_error(f"cannot read it ({e.strerror or e})", (), where) from None
    if size > MAX_CONFIG_BYTES:
        raise config_error(f"{size} bytes; a config file is a small text file (at most {MAX_CONFIG_BYTES} bytes)",
                           (), where)
    try:
        text = p.read_bytes().decode("utf-8")
        d = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError as e:
        raise config_error(f"not UTF-8 text ({e.reason} at byte {e.start})", (), where) from None
    except OSError as e:
        raise config_error(f"cannot read it ({e.strerror or e})", (), where) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, TOMLDecodeError; RecursionError: [[[[...
        kind = "TOML" if p.suffix == ".toml" else "JSON (or TOML, with a .toml suffix)"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise config_error(f"cannot parse it as {kind} ({first})", (), where) from None
    if not isinstance(d, dict):
        raise config_error(f"expected a table of sections, got {_short(d)}", (), where)
    if "task" in d and not _is_task(d["task"]):
        raise config_error(f"task={_short(d['task'])}: choose {' or '.join(TASK_CONFIGS)}", ("task",), where)
    return d


def resolve(file: str | None = None, overrides: list[str] = (), flags: dict | None = None, *,
            task: str | None = None, base: TrainConfig | None = None, recipe: str | None = None) -> TrainConfig:
    """Defaults <- `recipe` (a TOML shipped in resnetkit.train.recipes) <- config file <- `flags`
    {"optim.lr": 0.2} <- overrides ["optim.lr=0.2"] (later wins).

    The task is `task`, else the file's "task", else the recipe's, else classification; the result is
    checked (`check`). optim.lr_per_256 > 0 sets optim.lr from data.batch_size (whichever of the two is
    given later wins).
    `base`: start from this config instead of the defaults: a run's saved config when resuming it, where
    only the RESUMABLE keys may change (repeating a saved value is fine). Errors are ConfigErrors that
    name the key and carry where its value came from (see `config_error`).
    (resnetkit.train.prepare.RunRequest is the same for a whole run, the CLI's way in.)"""
    loaded = load_config_file(file) if file else {}
    where = Origin("file", str(file)) if file else None
    from_recipe = load_recipe(recipe) if recipe else {}
    layers = [(from_recipe, Origin("recipe", recipe))] if recipe else []
    layers += [(loaded, where)] if file else []
    layers += [({dotted.partition(".")[0]: {dotted.partition(".")[2]: value}}, Origin("flag", dotted))
               for dotted, value in (flags or {}).items() if value is not None]
    start = base if base is not None else for_task_of(task, loaded, where, from_recipe)
    return resolve_layers(start, layers, overrides, resuming=base is not None)[0]


def for_task_of(task: str | None, loaded: dict, where: Origin | None, from_recipe: dict) -> TrainConfig:
    """The defaults of the run's task: `task`, else the config file's, else the recipe's, else classification
    (a bad task in the file is named with the file)."""
    try:
        return TrainConfig.for_task(task or loaded.get("task") or from_recipe.get("task") or "classification")
    except ConfigError as e:
        raise _relocated(e, () if task else (where,)) from None


def resolve_layers(cfg: TrainConfig, layers: list[tuple[dict, Origin]], overrides=(), *, resuming: bool = False
                   ) -> tuple[TrainConfig, dict[str, Origin]]:
    """`cfg` with each (nested dict, Origin) layer applied in order, then the `overrides` strings; checked.
    Returns the config and {dotted key: Origin} for every key that was set. `resuming`: `cfg` is a run's
    saved config: automatic values keep what it chose, and only RESUMABLE keys may change."""
    base, origins = cfg, {}

    def apply(cfg: TrainConfig, d: dict, origin: Origin) -> TrainConfig:
        new = apply_nested(cfg, d, (origin,))
        origins.update({f"{s}.{k}": origin for s, kv in d.items() if s in SECTIONS for k in kv})
        optim = d.get("optim") if isinstance(d.get("optim"), dict) else {}
        if "lr" in optim and "lr_per_256" not in optim and new.optim.lr_per_256 > 0:
            # An explicit learning rate given after a per-256 one replaces it.
            new = dataclasses.replace(new, optim=dataclasses.replace(new.optim, lr_per_256=0.0))
        return new

    for d, origin in layers:
        cfg = apply(cfg, d, origin)
    for text in overrides:
        cfg = apply(cfg, parse_override(text), Origin("override", text))
    if _finite(cfg.optim.lr_per_256) and cfg.optim.lr_per_256 > 0 and _finite(cfg.data.batch_size):
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
            cfg.optim, lr=cfg.optim.lr_per_256 * cfg.data.batch_size / 256))
    try:
        check(cfg)
        if resuming:
            cfg = fill_automatic(base, cfg)  # the run's own choices for its automatic values
            check_resume(base, cfg)
    except ConfigError as e:
        raise _relocated(e, [origins.get(k) for k in getattr(e, "keys", ())]) from None
    return cfg, origins


def task_keys(task: str) -> dict[str, set[str]]:
    """{section: its keys} of a task's config."""
    model_cls, data_cls, _ = TASK_CONFIGS[task]
    shared = {s: set(_field_types(c)) for s, c in (("optim", OptimConfig), ("schedule", ScheduleConfig),
                                                    ("run", RunConfig))}
    return {"model": set(_field_types(model_cls)), "data": set(_field_types(data_cls)), **shared}


# -- value checks ----------------------------------------------------------------------------------


def _value(cfg: TrainConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _require(ok: bool, message: str, *keys: str) -> None:
    if not ok:
        raise config_error(message, keys)


def _in_range(cfg: TrainConfig, key: str, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
              whole: bool = False) -> None:
    """`key` is a finite number (a whole one if `whole`) within [lo, hi] (open ends where asked)."""
    v = _value(cfg, key)
    parts = [f"> {lo}" if lo_open else f">= {lo}"] if lo is not None else []
    parts += [f"< {hi}" if hi_open else f"<= {hi}"] if hi is not None else []
    want = f"must be a finite {'whole ' if whole else ''}number" + (f" {' and '.join(parts)}" if parts else "")
    ok = _finite(v) and (not whole or float(v).is_integer())
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
    _require(ok, f"{key}={_short(v)}: {want}", key)


def _choice(cfg: TrainConfig, key: str, options: tuple) -> None:
    v = _value(cfg, key)
    _require(v in options, f"{key}={_short(v)}: choose {', '.join(map(str, options[:-1]))} or {options[-1]}", key)


def _plain_name(cfg: TrainConfig, key: str, what: str) -> None:
    v = _value(cfg, key)
    _require(isinstance(v, str) and bool(v.strip()) and "\0" not in v, f"{key}={_short(v)}: give {what}", key)


def _plain(value, depth: int = 0) -> bool:
    """JSON's own values (finite numbers), nested at most 8 deep: what config.json and a checkpoint can hold."""
    if depth > 8:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, str | bool) or _finite(value)


def check(cfg: TrainConfig) -> None:
    """Value checks that a type cannot express; each error is a ConfigError naming the key (`.keys`). Each
    section checks its own keys (its `check` method, given the whole config for the keys that depend on
    another section); this adds the ones that span sections."""
    cfg.check()


def _check_kwargs(cfg: TrainConfig) -> None:
    _require(_plain(cfg.model.kwargs), f"model.kwargs={_short(cfg.model.kwargs)}: give a table of plain values "
             "(finite numbers, strings, booleans, lists)", "model.kwargs")


def _check_batches(cfg: TrainConfig) -> None:
    """The data keys every task has."""
    d, o = cfg.data, cfg.optim
    if d.batch_size is not None:  # segmentation: None is chosen from the data
        _in_range(cfg, "data.batch_size", 1, MAX_BATCH, whole=True)
        _require(d.batch_size % o.grad_accum == 0,
                 f"data.batch_size={d.batch_size} must be a positive multiple of optim.grad_accum={o.grad_accum}",
                 "data.batch_size", "optim.grad_accum")
    _in_range(cfg, "data.eval_batch_size", 1, MAX_BATCH, whole=True)
    for key in ("data.subset", "data.eval_subset"):
        _in_range(cfg, key, 0, MAX_BATCH, whole=True)


def _flat(cfg: TrainConfig) -> dict:
    return {f"{s}.{k}": getattr(getattr(cfg, s), k) for s in SECTIONS for k in _field_types(type(getattr(cfg, s)))}


def _is_auto(value) -> bool:
    return value is None or value == "auto"


def fill_automatic(saved: TrainConfig, cfg: TrainConfig) -> TrainConfig:
    """`cfg` with each automatic value (None or "auto") replaced by what the run `saved` resolved it to: a
    resumed run keeps the choices it made at its start (precision, segmentation defaults), never re-derives
    them on another machine or from changed data."""
    if cfg.task != saved.task:
        return cfg
    old, new = _flat(saved), _flat(cfg)
    filled = {k: old[k] for k in old if _is_auto(new.get(k, 0)) and not _is_auto(old[k])}
    nested: dict = {}
    for key, value in filled.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return apply_nested(cfg, nested) if nested else cfg


def check_resume(saved: TrainConfig, cfg: TrainConfig) -> None:
    """Refuse `cfg` for resuming the run whose config is `saved` if it changes anything but RESUMABLE keys
    (fill its automatic values from `saved` first: see fill_automatic)."""
    if cfg.task != saved.task:
        raise config_error(f"task={cfg.task!r} cannot change on resume: the run is a {saved.task} run", ("task",))
    old, new = _flat(saved), _flat(cfg)
    for key in old:
        if old[key] != new[key] and key not in RESUMABLE:
            raise config_error(f"{key} cannot change on resume: the run continues with its saved config ({key}="
                               f"{_short(old[key])}); only {', '.join(RESUMABLE)} can", (key,))
