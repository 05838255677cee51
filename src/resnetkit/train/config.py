"""Training configuration: frozen dataclasses, dotted overrides (`optim.lr=0.2`), JSON/TOML files.

The resolved config is written to RUN_DIR/config.json and into every checkpoint, so a run directory
says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from resnetkit.errors import UserError


@dataclass(frozen=True)
class ModelCfg:
    arch: str = "resnet20"
    kwargs: dict = field(default_factory=dict)  # extra create_model arguments; num_classes/in_chans come from data
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (GPU only)


@dataclass(frozen=True)
class DataCfg:
    name: str = "fashion_mnist"
    data_dir: str | None = None
    batch_size: int = 128  # global: summed over processes and accumulation steps
    eval_batch_size: int = 500
    subset: int = 0  # train on the first N images only (0 = all)
    pad: int | None = None  # pad-and-crop pixels; None = the dataset's default (4 for 32 px, 2 for 28 px)
    flip: bool | None = None  # horizontal flip; None = the dataset's default (off for digits)
    cutout: int = 0
    image_size: int = 32  # image folders only
    channels: int = 3  # image folders only
    strict: bool = False  # image folders: fail on an unreadable image instead of skipping it


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 0.1  # He et al. 2016 CIFAR: 0.1 at batch 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    wd_norm_and_bias: bool = False  # also decay BatchNorm weights and biases
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA of the weights
    grad_accum: int = 1  # split each global batch into this many sequential micro-batches


@dataclass(frozen=True)
class ScheduleCfg:
    name: str = "cosine"  # step | cosine | onecycle
    epochs: float = 0.0  # length in epochs (used when steps == 0 and no budget)
    steps: int = 0  # length in optimizer steps; wins over epochs
    budget_min: float = 0.0  # fit the whole schedule into this wall-clock budget
    warmup_steps: int = 0
    warmup: str = "linear"  # linear: ramp from 0; constant: hold warmup_lr (He et al. use 0.01 for ResNet-110)
    warmup_lr: float = 0.01
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: iterations, or fractions of the run when <= 1
    gamma: float = 0.1  # step: multiply by this at each milestone
    final_lr_frac: float = 0.0  # cosine: end at lr * this


@dataclass(frozen=True)
class RunCfg:
    out: str = "runs/train"
    seed: int = 0
    deterministic: bool = False
    amp: str = "none"  # none | bf16
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 20  # steps between progress updates and non-finite checks


@dataclass(frozen=True)
class TrainConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    run: RunCfg = field(default_factory=RunCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return apply_nested(cls(), d)


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(value, tp, key: str):
    """Convert a parsed value to the field's annotated type (str annotations are resolved by the caller)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                return _coerce(value, a, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        return str(value)
    elif origin is tuple or tp is tuple:
        if isinstance(value, list | tuple):
            return tuple(float(v) for v in value)
        if isinstance(value, int | float):
            return (float(value),)
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    raise UserError(f"--set {key}: {value!r} is not a valid {getattr(tp, '__name__', tp)}")


def _field_types(section_cls) -> dict:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def apply_nested(cfg: TrainConfig, d: dict, origin: str = "config") -> TrainConfig:
    """Return cfg with the values of a nested dict {"optim": {"lr": 0.2}} replaced, checking every key."""
    updates = {}
    for section, values in d.items():
        if section not in SECTIONS:
            raise UserError(f"{origin}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"{origin}: section {section!r} must be a table of key = value")
        sec = getattr(cfg, section)
        types_ = _field_types(type(sec))
        changes = {}
        for k, v in values.items():
            if k not in types_:
                raise UserError(f"{origin}: unknown key {section}.{k}; {section} has {', '.join(types_)}")
            changes[k] = _coerce(v, types_[k], f"{section}.{k}")
        updates[section] = dataclasses.replace(sec, **changes)
    return dataclasses.replace(cfg, **updates)


def parse_override(text: str) -> dict:
    """'optim.lr=0.2' -> {"optim": {"lr": 0.2}}; the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=0.2")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw if raw.lower() not in ("none", "null") else None
    return {parts[0]: {parts[1]: value}}


def load_config_file(path: str) -> dict:
    """A JSON or TOML file holding a nested dict of sections."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        return json.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"--config {path}: cannot parse ({e})") from e


def resolve(file: str | None = None, overrides: list[str] = (), flags: dict | None = None, *,
            base=None, check_fn=None):
    """Defaults <- config file <- command-line flags <- --set overrides (later wins).

    `base` is the config of defaults (a TrainConfig unless another task's config is given) and
    `check_fn` its value checks (`check` by default)."""
    cfg = TrainConfig() if base is None else base
    if file:
        cfg = apply_nested(cfg, load_config_file(file), origin=f"--config {file}")
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".")
            cfg = apply_nested(cfg, {section: {key: value}}, origin="flag")
    for text in overrides:
        cfg = apply_nested(cfg, parse_override(text), origin="--set")
    (check_fn or check)(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    """Value checks that a type cannot express."""
    s, o = cfg.schedule, cfg.optim
    if s.name not in ("step", "cosine", "onecycle"):
        raise UserError(f"schedule.name={s.name!r}; choose step, cosine or onecycle")
    if s.warmup not in ("linear", "constant"):
        raise UserError(f"schedule.warmup={s.warmup!r}; choose linear or constant")
    if cfg.run.amp not in ("none", "bf16"):
        raise UserError(f"--amp {cfg.run.amp}: choose none or bf16")
    if s.epochs <= 0 and s.steps <= 0 and s.budget_min <= 0:
        raise UserError("say how long to train: --epochs N, --budget-min M, or --set schedule.steps=N")
    if cfg.data.batch_size <= 0 or o.grad_accum <= 0 or cfg.data.batch_size % o.grad_accum:
        raise UserError(f"batch size {cfg.data.batch_size} must be a positive multiple of optim.grad_accum "
                        f"({o.grad_accum})")
    if o.lr <= 0 or not 0 <= o.momentum < 1 or not 0 <= o.label_smoothing < 1 or not 0 <= o.ema_decay < 1:
        raise UserError("need lr > 0, 0 <= momentum < 1, 0 <= label_smoothing < 1, 0 <= ema_decay < 1")
