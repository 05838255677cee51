"""Preparing a run: flags, config files and recipes become one resolved, immutable run, in one place.

    request (RunRequest: what the user asked for)
      -> resolve_request   defaults <- recipe <- config file <- flags <- --set, read once; a resume starts
                           from the run's saved config and is checked against it once
      -> prepare           the run directory checked, the data read once, every automatic choice made
                           once (stream, the 1001-class background, the segmentation settings, amp,
                           channels_last), the task and the model built
      -> PreparedRun       cfg (final: nothing replaces it after this), task, model, the checkpoint to
                           resume from, and `choices`: what was automatic and why

The Trainer only trains a PreparedRun; `resnetkit train --dry-run` prints `PreparedRun.summary()`.
One automatic choice is left to the run itself: an unset data.pad of a budgeted run waits for the
budget planner's first speed estimate (its epochs decide it), and is then kept in the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnetkit.errors import ConfigError, MissingFileError
from resnetkit.train import checkpoint, distributed, precision, rundir
from resnetkit.train.classification import ClassificationTask
from resnetkit.train.config import (
    Origin,
    TrainConfig,
    check,
    check_resume,
    config_error,
    fill_automatic,
    for_task_of,
    load_config_file,
    resolve_layers,
    task_keys,
)
from resnetkit.train.distributed import Dist
from resnetkit.train.recipes import load_recipe
from resnetkit.train.segmentation import SegmentationTask
from resnetkit.train.selection import keep_best_metric
from resnetkit.train.task import Task

log = logging.getLogger("resnetkit.train")

TASK_TYPES: dict[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask}

# Settings whose config key depends on the task: what a caller (the CLI's --model, --data, --init) may name
# by these short names.
ALIASES = {"classification": {"model": "model.arch", "data": "data.name", "init": "model.init"},
           "segmentation": {"model": "model.backbone", "data": "data.path", "init": "model.backbone_weights"}}


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for. `flags`: {dotted key or ALIASES name: value} (None = not given), applied after
    the recipe and the config file and before `overrides` ("optim.lr=0.2"). `resume`: continue the run in
    `out` (default: the task's run.out) with its saved config; only config.RESUMABLE keys may change."""

    task: str | None = None
    recipe: str | None = None
    config: str | None = None
    flags: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    resume: bool = False
    out: str | None = None


@dataclass
class PreparedRun:
    """A run ready to train: the final config, its task (data loaded), its model (on the device, initial or
    pretrained weights), the process group, and for a resumed run the checkpoint it continues from."""

    cfg: TrainConfig
    task: Task
    model: torch.nn.Module
    dist: Dist
    state: dict | None = None
    choices: dict[str, dict] = field(default_factory=dict)  # {key: {"value": ..., "why": ...}}
    origins: dict[str, Origin] = field(default_factory=dict)

    @property
    def resumed(self) -> bool:
        return self.state is not None

    def summary(self) -> dict:
        """The resolved config and what was chosen automatically, as --dry-run prints it."""
        return {**self.cfg.to_dict(), "automatic": self.choices}


def resolve_request(request: RunRequest) -> tuple[TrainConfig, dict[str, Origin], dict | None]:
    """(config, {key: Origin}, checkpoint state or None): the request's layers merged once."""
    if request.resume:
        return _resume_config(request)
    loaded = load_config_file(request.config) if request.config else {}
    from_recipe = load_recipe(request.recipe) if request.recipe else {}
    where = Origin("file", str(request.config)) if request.config else None
    base = for_task_of(request.task, loaded, where, from_recipe)
    layers = [(from_recipe, Origin("recipe", request.recipe))] if request.recipe else []
    layers += [(loaded, where)] if request.config else []
    cfg, origins = resolve_layers(base, layers + _flag_layers(request, base.task), request.overrides)
    return cfg, origins, None


def _flag_layers(request: RunRequest, task: str) -> list[tuple[dict, Origin]]:
    """The flags as layers {section: {key: value}}, aliases mapped to this task's keys; a setting that only
    another task has is refused by name."""
    layers = []
    for name, value in request.flags.items():
        if value is None:
            continue
        key = ALIASES[task].get(name, name)
        section, _, k = key.partition(".")
        own = task_keys(task)
        if section in own and k not in own[section]:
            other = next((t for t in TASK_TYPES if k in task_keys(t)[section]), None)
            if other is not None:
                raise config_error(f"{key} is a setting of task {other}, not of {task}", (key,),
                                   (Origin("flag", name),))
        layers.append(({section: {k: value}}, Origin("flag", name)))
    return layers


def _resume_config(request: RunRequest) -> tuple[TrainConfig, dict[str, Origin], dict]:
    """The saved run's config with the request's resumable changes, checked once; and its checkpoint."""
    out = request.out or TrainConfig.for_task(request.task or "classification").run.out
    path = Path(out) / rundir.CHECKPOINT
    state = checkpoint.load_checkpoint(path)
    saved = checkpoint.saved_config(state, path)
    saved = dataclasses.replace(saved, run=dataclasses.replace(saved.run, out=str(out)))  # where it is now
    if request.task and request.task != saved.task:
        raise config_error(f"cannot change on resume: the run in {out} is a {saved.task} run", ("task",),
                           (Origin("flag", "task"),))
    if request.recipe:
        raise config_error(f"cannot be used with resume: the run in {out} goes on with its saved "
                           "config", ("recipe",), (Origin("flag", "recipe"),))
    layers = [(load_config_file(request.config), Origin("file", str(request.config)))] if request.config else []
    layers += [({"run": {"out": str(out)}}, Origin("flag", "run.out"))]
    cfg, origins = resolve_layers(saved, layers + _flag_layers(request, saved.task), request.overrides,
                                  resuming=True)
    return cfg, origins, state


def prepare(request: RunRequest | TrainConfig, *, resume: bool = False) -> PreparedRun:
    """Resolve `request` (or take a resolved TrainConfig; `resume`: continue the run in its run.out, whose
    saved config it must match apart from config.RESUMABLE) into a PreparedRun; see the module docstring."""
    if isinstance(request, TrainConfig):
        cfg, origins, state = _from_config(request, resume)
    else:
        cfg, origins, state = resolve_request(request)
    try:
        return _build(cfg, state, origins)
    except (ConfigError, MissingFileError) as e:  # a value only the data or the model can refuse: where from
        if getattr(e, "keys", ()) and not getattr(e, "origins", ()):
            raise locate(e, origins) from None
        raise


def dry_run(request: RunRequest) -> dict:
    """What `prepare(request)` resolves, as PreparedRun.summary() gives it, without training. When the data
    cannot be read here (a recipe's ImageNet path, a dataset not yet downloaded), the config is still
    resolved and checked, and the choices that need the data say so."""
    cfg, origins, state = resolve_request(request)
    try:
        return _build(cfg, state, origins).summary()
    except (ConfigError, MissingFileError) as e:
        data_keys = {"data.name", "data.path", "data.data_dir", "data.val_path"}
        if not isinstance(e, MissingFileError) or not data_keys & set(getattr(e, "keys", ())):
            raise locate(e, origins) if getattr(e, "keys", ()) and not getattr(e, "origins", ()) else e from None
        log.warning("dry run: the data cannot be read (%s); the choices that need it are left open", e)
        return {**cfg.to_dict(), "automatic": {"unresolved": {"value": None, "why": f"needs the data: {e}"}}}


def locate(e: ConfigError, origins: dict[str, Origin]) -> ConfigError:
    """`e` (which names keys but not where their values came from) with the origins of those keys."""
    return config_error(e.detail, e.keys, [origins.get(k) for k in e.keys], type(e))


def _from_config(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, dict, dict | None]:
    check(cfg)
    if not resume:
        return cfg, {}, None
    path = Path(cfg.run.out) / rundir.CHECKPOINT
    state = checkpoint.load_checkpoint(path)
    saved = checkpoint.saved_config(state, path)
    cfg = fill_automatic(saved, cfg)
    check_resume(saved, cfg)
    return cfg, {}, state


def _check_unfinished(cfg: TrainConfig, state: dict) -> None:
    """A resumed run must have steps left before its end (the schedule's, or schedule.max_steps)."""
    step, total, stop = state.get("step"), state.get("total_steps"), cfg.schedule.max_steps
    if not (type(step) is int and type(total) is int and 0 <= step <= total):
        return  # impossible counters: the Trainer refuses them with the rest of the state (checkpoint.counters)
    if isinstance(state.get("selection"), dict) and state["selection"].get("stopped"):
        raise config_error(f"run.out={cfg.run.out}: the run stopped early at step {step} (run.early_stop="
                           f"{cfg.run.early_stop}: no better {cfg.run.keep_best}); nothing to resume",
                           ("run.early_stop",))
    if step >= (min(total, stop) if stop > 0 else total):
        more = (f" (it stopped at schedule.max_steps={stop} of {total}: raise that to go on)" if step < total else "")
        raise config_error(f"run.out={cfg.run.out}: the run already finished ({step} steps){more}; nothing to "
                           "resume", ("schedule.max_steps",))


def _build(cfg: TrainConfig, state: dict | None, origins: dict) -> PreparedRun:
    if state is not None:
        _check_unfinished(cfg, state)
    d = distributed.init()
    if state is None and d.main:  # only rank 0 looks: the others may start after it made the folder
        rundir.check_new_run_dir(Path(cfg.run.out), inputs=_inputs(cfg))
    _set_runtime(cfg)
    kind = TASK_TYPES[cfg.task]
    data, cfg, choices = kind.load(cfg)  # the data read once; its automatic values chosen from it
    if d.main:
        kind.log_choices(choices, data)
    cfg, best = _keep_best(cfg)
    choices.update(best)
    if cfg.run.keep_best != "none" and cfg.run.keep_best not in kind.METRICS:
        raise config_error(f"run.keep_best={cfg.run.keep_best}: not a metric of {cfg.task} runs; choose "
                           f"{', '.join(kind.METRICS)} or none", ("run.keep_best",))
    micro = _micro_batch(cfg, d, len(data.train))
    kind.check_micro_batch(cfg, micro)
    cfg, why = precision.resolve_precision(cfg, d, lambda amp: _measure_layout(kind, cfg, data, d, micro, amp))
    choices = {**{k: {"value": v, "why": w} for k, (v, w) in choices.items()}, **why}
    task = kind(cfg, data, d.device)
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = task.build_model()
    if state is None:
        task.init_weights(model)  # a resumed run gets the task's state with the rest (Trainer)
    if cfg.run.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(d.device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return PreparedRun(cfg, task, model, d, state, choices, origins)


def _keep_best(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """run.keep_best "auto" -> the metric (or none) and why (resnetkit.train.selection)."""
    if cfg.run.keep_best != "auto":
        return cfg, {}
    metric, why = keep_best_metric(cfg)
    if metric == "none" and cfg.run.early_stop:
        raise config_error(f"run.early_stop={cfg.run.early_stop} needs a validation split to watch ({why}); set "
                           "data.holdout=N (or data.val_path), or run.keep_best=METRIC", ("run.early_stop",))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, keep_best=metric))
    return cfg, {"run.keep_best": (metric, why)}


def _measure_layout(kind: type[Task], cfg: TrainConfig, data, d: Dist, micro: int, amp: str) -> tuple[bool, str]:
    """channels_last auto on a CPU: time the two layouts on a throwaway task and model (the run's RNG
    streams untouched), set up as the run's own will be."""
    with torch.random.fork_rng(devices=[]):
        probe = kind(cfg, data, d.device)
        model = probe.build_model()
        probe.init_weights(copy.deepcopy(model))  # normalisation as the run will have it
        return precision.measure_channels_last(model.to(d.device), probe, micro, amp)


def _micro_batch(cfg: TrainConfig, d: Dist, n_train: int) -> int:
    b, accum = cfg.data.batch_size, cfg.optim.grad_accum
    parts = d.world * accum
    if b % parts:
        raise config_error(f"data.batch_size={b} does not split into {d.world} processes x "
                           f"optim.grad_accum={accum} micro-batches; choose a multiple of {parts}",
                           ("data.batch_size", "optim.grad_accum"))
    if n_train < b:
        raise config_error(f"the training set has {n_train} images, fewer than one batch of data.batch_size={b}; "
                           "lower data.batch_size", ("data.batch_size", "data.subset"))
    return b // parts


def _set_runtime(cfg: TrainConfig) -> None:
    r = cfg.run
    if r.threads:
        torch.set_num_threads(r.threads)
    if r.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _inputs(cfg: TrainConfig) -> list[str]:
    """What a run reads, which its run directory may not be, nor lie inside."""
    if cfg.task == "segmentation":
        return [cfg.data.path, cfg.model.backbone_weights]
    return [cfg.data.data_dir]
