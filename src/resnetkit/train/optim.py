"""SGD with weight decay on conv / linear weights only (He et al. decay every weight; BN and biases are
commonly exempt, e.g. Goyal et al. 2017 "no bias decay"), and an EMA of the weights."""

from __future__ import annotations

import copy

import torch

from resnetkit.train.config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: conv / linear weights (decayed) and everything else (decayed only if asked)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, torch.nn.modules.conv._ConvNd | torch.nn.Linear)
            (decay if is_weight or decay_norm_and_bias else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.SGD:
    groups = param_groups(model, o.weight_decay, o.wd_norm_and_bias)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


class EMA:
    """Exponential moving average of the weights, kept in a copy of the model.

    Floating-point parameters and buffers are averaged; integer buffers (BN's step count) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k], 1 - self.decay)
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
