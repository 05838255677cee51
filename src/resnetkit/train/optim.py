"""The optimizer (SGD with optional Nesterov momentum, or AdamW) with weight decay on conv / linear weights
only (He et al. decay every weight; BN and biases are commonly exempt, e.g. Goyal et al. 2017 "no bias
decay"), a learning-rate multiplier for the classifier, and an EMA of the weights."""

from __future__ import annotations

import copy

import torch

from resnetkit.train.config import OptimConfig
from resnetkit.train.finetune import head_parameters


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 head_lr_mult: float = 1.0) -> list[dict]:
    """Conv / linear weights (decayed) and everything else (decayed only if asked); frozen parameters are
    left out. Each group has an "lr_mult" (the Trainer sets lr = schedule's lr x lr_mult): with
    head_lr_mult != 1 the classifier's parameters get two groups of their own with that multiplier."""
    head = {id(p) for p in head_parameters(model)} if head_lr_mult != 1.0 else set()
    groups = {(decay, in_head): [] for decay in (True, False) for in_head in (False, True)}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, torch.nn.modules.conv._ConvNd | torch.nn.Linear)
            groups[(is_weight or decay_norm_and_bias, id(p) in head)].append(p)
    out = [{"params": groups[(True, False)], "weight_decay": weight_decay, "lr_mult": 1.0},
           {"params": groups[(False, False)], "weight_decay": 0.0, "lr_mult": 1.0}]
    if head:
        out += [{"params": groups[(True, True)], "weight_decay": weight_decay, "lr_mult": head_lr_mult},
                {"params": groups[(False, True)], "weight_decay": 0.0, "lr_mult": head_lr_mult}]
    return out


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """optim.name's optimizer over `param_groups`, on the CPU and CUDA the fused implementation (one kernel
    per step over all tensors; ResNet-20's SGD step: about 1.1 ms fused, 1.9 ms foreach, 6 ms per-tensor on
    2 CPU cores, benchmarks/train_throughput.py --section optimizer), elsewhere the foreach one."""
    groups = param_groups(model, o.weight_decay, o.wd_norm_and_bias, o.head_lr_mult)
    device = next(model.parameters()).device.type
    impl = {"fused": True} if device in ("cpu", "cuda") else {"foreach": True}
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **impl)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, **impl)


class EMA:
    """Exponential moving average of the weights, kept in a copy of the model.

    Floating-point parameters and buffers are averaged; integer buffers (BN's step count) are copied. With
    `warmup` the decay at step t is min(decay, 1 - (1 + t)^(-2/3)), timm's ModelEmaV3 warm-up (gamma 1,
    power 2/3): 0 at the first step, so the average does not carry the random initialisation (at 0.999
    without it, 0.999^2400 = 9% of the weights after 2,400 steps still are that initialisation).
    """

    WARMUP_POWER = 2 / 3

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = None  # (averaged tensors, the model's, (copied, source) pairs), made at the first update

    def decay_at(self, step: int) -> float:
        """The decay of the update after `step` optimizer steps (0 for the first)."""
        return min(self.decay, 1 - (1 + step) ** -self.WARMUP_POWER) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int = 0) -> None:
        if self._pairs is None:  # loading a state copies into these tensors, so they stay the ones to update
            src, dst = model.state_dict(), self.module.state_dict()
            floats = [k for k, v in dst.items() if v.dtype.is_floating_point]
            self._pairs = ([dst[k] for k in floats], [src[k] for k in floats],
                           [(v, src[k]) for k, v in dst.items() if not v.dtype.is_floating_point])
        mine, theirs, others = self._pairs
        torch._foreach_lerp_(mine, theirs, 1 - self.decay_at(step))  # one fused call instead of one per tensor
        for v, s in others:
            v.copy_(s)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
