"""Parameter and MAC counts, and end point tables, computed on the meta device (no arithmetic runs,
so even resnet1202 or a 513x513 input costs milliseconds)."""

from __future__ import annotations

import torch
from torch import nn

from resnetkit.models.registry import create_model, model_defaults


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers such as BN running stats not included)."""
    return sum(p.numel() for p in model.parameters())


def _conv_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        return out.numel() * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs (multiply-accumulates of convs and linears, batch 1) and end point shapes for one input.

    Build the model under `torch.device("meta")` to skip the arithmetic (see `profile_model`). Returns
    {'params', 'macs', 'end_points': {name: shape}, 'output': shape}.
    """
    macs = 0

    def hook(mod, _inp, out):
        nonlocal macs
        macs += _conv_macs(mod, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        x = torch.empty((1, *input_shape), device=device)
        with torch.no_grad():
            if hasattr(model, "forward_end_points"):
                out, eps = model.forward_end_points(x)
            else:
                out, eps = model(x), {}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return dict(params=count_params(model), macs=macs,
                end_points={k: tuple(v.shape[1:]) for k, v in eps.items()}, output=tuple(out.shape[1:]))


def profile_model(name: str, input_size: tuple[int, int] | None = None, **kwargs) -> dict:
    """Profile a registered model built on the meta device at its default (or a given) input size."""
    defaults = model_defaults(name)
    h, w = input_size or (defaults["input_size"], defaults["input_size"])
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    in_chans = kwargs.get("in_chans", 3)
    result = profile(model, (in_chans, h, w))
    result["input_size"] = (h, w)
    return result
