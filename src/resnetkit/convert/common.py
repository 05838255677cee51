"""What every converter shares: load a mapped state dict and fail loudly on any mismatch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from resnetkit.errors import UserError


class ConversionError(UserError):
    """A checkpoint does not fit the target architecture (keys or shapes)."""


def _first(items, n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_mapped_state_dict(model: nn.Module, mapped: dict[str, torch.Tensor | np.ndarray],
                           source: str = "checkpoint") -> nn.Module:
    """Copy `mapped` (target names -> tensors) into `model`, strictly.

    Every target parameter and buffer must be provided (BN's `num_batches_tracked` excepted), every
    provided tensor must have a target, and every shape must match; otherwise nothing is loaded and a
    ConversionError names the first offending keys.
    """
    target = model.state_dict()
    optional = {k for k in target if k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in mapped and k not in optional]
    unexpected = [k for k in mapped if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing in {source}: {_first(missing)}")
        if unexpected:
            parts.append(f"unused from {source}: {_first(unexpected)}")
        raise ConversionError("; ".join(parts) + " (is this the right architecture? try --arch)")
    bad = [f"{k} {tuple(np.shape(v))} vs {tuple(target[k].shape)}" for k, v in mapped.items()
           if tuple(np.shape(v)) != tuple(target[k].shape)]
    if bad:
        raise ConversionError(f"shape mismatch between {source} and the model: {_first(bad, 3)}")
    state = {k: torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v).to(target[k].dtype)
             for k, v in mapped.items()}
    for k in optional - state.keys():
        state[k] = target[k]
    model.load_state_dict(state, strict=True)
    return model
