"""The model a server holds: a weights file or a catalogue tag, loaded on the chosen device."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from resnetkit._helpers import did_you_mean, first_few
from resnetkit.errors import MissingFileError
from resnetkit.export.backends import backend_device
from resnetkit.pretrained import REGISTRY, load_pretrained
from resnetkit.weights import load


def load_served(weights: str, *, backend: str = "auto", device: str | None = None, allow_nonfinite: bool = False
                ) -> tuple[nn.Module, torch.device, str]:
    """(model in eval mode with its card, its device, where it came from) for a weights file or a tag
    of resnetkit.pretrained (downloaded and converted once, then read from the cache). `device` None: the
    first GPU when there is one and `backend` runs there (resnetkit.export.backends.backend_device)."""
    dev = backend_device(backend, device)
    if Path(weights).is_file():
        model, source = load(weights, allow_nonfinite=allow_nonfinite), str(weights)
    elif weights in REGISTRY:
        model, source = load_pretrained(weights), f"pretrained {weights}"
    else:
        raise MissingFileError(f"{weights}: no such weights file, and not a pretrained tag; "
                               f"{did_you_mean(weights, REGISTRY, 'tags: ' + first_few(REGISTRY))}")
    return model.to(dev).eval(), dev, source
