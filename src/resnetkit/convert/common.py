"""What every converter shares: the BatchNorm variable names of TF/Keras, and loading a mapped state dict
that fails loudly on any mismatch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from resnetkit._helpers import load_state_dict_strict
from resnetkit.errors import CheckpointError

# TF / Keras BatchNormalization variables -> torch BatchNorm2d state dict names
BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class ConversionError(CheckpointError):
    """A checkpoint does not fit the target architecture (keys or shapes), or is not what it claims."""


def load_mapped_state_dict(model: nn.Module, mapped: dict[str, torch.Tensor | np.ndarray],
                           source: str = "checkpoint") -> nn.Module:
    """Copy `mapped` (target names -> tensors) into `model`, strictly.

    Every target parameter and buffer must be provided (BN's `num_batches_tracked` excepted), every
    provided tensor must have a target, and every shape must match; otherwise nothing is loaded and a
    ConversionError names the first offending keys.
    """
    state = {k: torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in mapped.items()}
    optional = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    try:
        return load_state_dict_strict(model, state, source, optional=optional,
                                      hint="is this the right architecture? pass arch=")
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
