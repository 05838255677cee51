"""Fine-tuning: start a classification run from one of our weights files or a pretrained catalogue tag
(model.init), freeze the stem and the first stages (model.freeze_stages), and find the classifier's
parameters for their own learning rate (optim.head_lr_mult).

Frozen stages keep requires_grad False and their BatchNorm layers in eval mode, so their running statistics
stay bitwise what the init weights hold: a forward pre-hook puts each frozen BatchNorm back in eval mode
before it runs, whatever `.train()` the Trainer called on the whole model in between.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from resnetkit._helpers import first_few, load_state_dict_strict
from resnetkit.errors import CheckpointError, ConfigError, DownloadError, MissingFileError
from resnetkit.pretrained import REGISTRY, load_pretrained
from resnetkit.train.config import config_error
from resnetkit.weights import load, read_card

log = logging.getLogger("resnetkit.train")


def load_init(spec: str, arch: str) -> nn.Module:
    """The model of `spec`, a weights file of ours or else a pretrained tag (downloaded and converted on first
    use), which must hold an `arch`: that is checked from the file's header or the catalogue before anything
    is read or downloaded. Errors name model.init."""
    try:
        is_file = Path(spec).is_file()
        if not is_file and spec not in REGISTRY:
            raise MissingFileError("neither a weights file nor a pretrained tag (resnetkit.pretrained."
                                   "list_pretrained() lists the tags)")
        held = read_card(spec).arch if is_file else REGISTRY[spec].arch
        if held != arch:
            raise config_error(f"model.init={spec} holds a {held}, but model.arch={arch}; train a {held} "
                               f"(model.arch) or start from {arch} weights", ("model.init", "model.arch"))
        return load(spec) if is_file else load_pretrained(spec)
    except (CheckpointError, MissingFileError, DownloadError) as e:
        raise type(e)(f"model.init={spec}: {e}") from None


def init_from(model: nn.Module, spec: str, arch: str, class_names: list[str] | None = None) -> nn.Module:
    """Copy the weights of `spec` into `model` (built as `arch` for the run's data). The init model's
    classifier is replaced first (`reset_classifier`: a new, randomly initialised head, logged) when the class
    counts differ, or when the file names its classes and they are not the run's `class_names` (a new task
    with as many classes: the old head's rows would mean other classes). Returns the init model (its
    `.card` says how its inputs were normalised)."""
    src = load_init(spec, arch)
    want, have = getattr(model, "num_classes", None), getattr(src, "num_classes", None)
    held = list(src.card.class_names or []) if src.card is not None else []
    if want != have:
        src.reset_classifier(want)
        log.info("init %s: new classifier for %s classes (the file has %s), randomly initialised", spec, want, have)
    elif class_names is not None and held and held != list(class_names):
        src.reset_classifier(want)
        log.info("init %s: new classifier, randomly initialised: the file's classes (%s) are not the data's (%s)",
                 spec, first_few(held), first_few(list(class_names)))
    try:
        load_state_dict_strict(model, src.state_dict(), source=spec, hint=f"model.init holds {src.config.arch} "
                               f"with options {src.config.kwargs}, which do not fit this run's model")
    except CheckpointError as e:
        raise ConfigError(f"model.init={spec}: {e}") from None
    log.info("init weights from %s (%s)", spec, src.card.source or src.config.arch)
    return src


def _keep_eval(module: nn.Module, args) -> None:
    module.train(False)


def stages(model: nn.Module) -> list[nn.Module]:
    """[stem, stage 1, stage 2, ...] of a ResNet: the root (conv1, pool1) and each block."""
    stem = [m for m in (getattr(model, "conv1", None), getattr(model, "pool1", None)) if m is not None]
    blocks = list(getattr(model, "blocks", nn.Sequential()).children())
    return [nn.ModuleList(stem)] + blocks


def freeze_stages(model: nn.Module, n: int) -> None:
    """Freeze the stem and stages 1..n (n = all of them: a linear probe, the post-norm too): no gradients,
    BatchNorm in eval mode for good. n = 0 does nothing."""
    if n <= 0:
        return
    parts = stages(model)
    if n > len(parts) - 1:
        raise config_error(f"model.freeze_stages={n}: {model.config.arch} has {len(parts) - 1} stages",
                           ("model.freeze_stages",))
    frozen = parts[:n + 1]
    if n == len(parts) - 1 and getattr(model, "postnorm", None) is not None:
        frozen.append(model.postnorm)
    for part in frozen:
        part.requires_grad_(False)
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                m.register_forward_pre_hook(_keep_eval)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters (the logits layer), which optim.head_lr_mult applies to."""
    head = getattr(model, "logits", None)
    return list(head.parameters()) if isinstance(head, nn.Module) else []
