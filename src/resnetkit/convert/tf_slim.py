"""TF-slim `resnet_v1_*` / `resnet_v2_*` variables -> resnetkit models of the slim layout.

A key-map plus one tensor transform (HWIO -> OIHW). The variant (v1/v2, depth, classes) is read off
the variable names and shapes; strides are slim's (2/2/2/1 in the last unit), which checkpoints do not
record, so a non-standard body must be built by the caller and filled with `load_slim_variables`.
"""

from __future__ import annotations

import os
import re

import numpy as np
from torch import nn

from resnetkit.convert.common import BN, ConversionError, load_mapped_state_dict
from resnetkit.convert.tf_checkpoint import read_checkpoint
from resnetkit.models import create_model
from resnetkit.models.variants import SLIM_DEPTHS

UNIT_RE = re.compile(r"^block(\d+)/unit_(\d+)/(?:bottleneck|basic)_v\d/")
SKIP = re.compile(r"(^|/)(global_step|Momentum|ExponentialMovingAverage)|/(Momentum|RMSProp|Adam)")


def map_variable(name: str, scope: str, has_bn: set[str]) -> str:
    """'resnet_v2_50/block1/unit_1/bottleneck_v2/conv1/BatchNorm/gamma' -> 'blocks.block1.unit_1.conv1.bn.weight'.

    `has_bn` holds the layer paths followed by a BatchNorm (their weights live under `.conv`).
    """
    if not name.startswith(scope + "/"):
        raise ConversionError(f"variable {name!r} is outside the network scope {scope!r}")
    rest = UNIT_RE.sub(r"blocks.block\1.unit_\2.", name[len(scope) + 1:])
    layer, _, leaf = rest.rpartition("/")
    if layer.endswith("/BatchNorm"):
        return f"{layer[:-len('/BatchNorm')].replace('/', '.')}.bn.{BN[leaf]}"
    if leaf in BN:  # a bare batch_norm scope: v2's preact and postnorm
        layer = layer.replace("preact", "preact_bn")
        return f"{layer.replace('/', '.')}.{BN[leaf]}"
    if leaf in ("weights", "biases"):
        attr = "weight" if leaf == "weights" else "bias"
        sub = ".conv" if layer in has_bn else ""
        return f"{layer.replace('/', '.')}{sub}.{attr}"
    raise ConversionError(f"unknown TF-slim variable {name!r}")


def map_variables(variables: dict[str, np.ndarray], scope: str,
                  drop_background: bool = False) -> dict[str, np.ndarray]:
    """All slim variables -> our state dict names and layouts (conv HWIO -> OIHW)."""
    has_bn = {n[: n.index("/BatchNorm/")] for n in variables if "/BatchNorm/" in n}
    has_bn = {UNIT_RE.sub(r"blocks.block\1.unit_\2.", n[len(scope) + 1:]) for n in has_bn}
    out = {}
    for name, value in variables.items():
        key = map_variable(name, scope, has_bn)
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        if drop_background and key.startswith("logits."):
            value = value[1:]  # slim's 1001-way logits put 'background' at index 0
        out[key] = value
    return out


def detect(variables: dict[str, np.ndarray]) -> dict:
    """{scope, version, depth, arch, num_classes, units} from the variable names of a slim ResNet."""
    scopes = {n.split("/")[0] for n in variables}
    if len(scopes) != 1:
        raise ConversionError(f"expected one network scope, found {sorted(scopes)[:5]}")
    scope = scopes.pop()
    kinds = {m.group(1) for n in variables if (m := re.search(r"/(bottleneck_v\d|basic_v\d)/", n))}
    if not kinds:
        raise ConversionError(f"no residual units under {scope!r}: not a TF-slim ResNet checkpoint")
    if len(kinds) > 1:
        raise ConversionError(f"mixed unit kinds {sorted(kinds)}")
    kind = kinds.pop()
    version = int(kind[-1])
    units: dict[int, int] = {}
    for n in variables:
        if m := re.search(r"/block(\d+)/unit_(\d+)/", n):
            b, u = int(m.group(1)), int(m.group(2))
            units[b] = max(units.get(b, 0), u)
    layers = tuple(units[b] for b in sorted(units))
    depth = next((d for d, ls in SLIM_DEPTHS.items() if ls == layers), None)
    logits = variables.get(f"{scope}/logits/biases")
    return dict(scope=scope, version=version, layers=layers, depth=depth,
                arch=f"resnet_v{version}_{depth}" if depth and kind.startswith("bottleneck") else None,
                num_classes=None if logits is None else int(np.shape(logits)[0]))


def load_slim_variables(model: nn.Module, variables: dict[str, np.ndarray], scope: str | None = None,
                        drop_background: bool = False) -> nn.Module:
    """Fill a slim-layout model with slim variables, strictly (every variable used, every shape right)."""
    variables = {k: v for k, v in variables.items() if not SKIP.search(k)}
    scope = scope or detect(variables)["scope"]
    mapped = map_variables(variables, scope, drop_background)
    return load_mapped_state_dict(model, mapped, source="TF-slim checkpoint")


def from_tf_slim(src: str | os.PathLike | dict, arch: str | None = None, drop_background: bool = False,
                 **kwargs) -> nn.Module:
    """Read a TF-slim checkpoint (prefix, V1 file, or a dict of arrays) into our model of the same variant.

    The 1001-class logits of the slim releases keep their 'background' class unless `drop_background`.
    Extra kwargs (output_stride, global_pool, ...) go to `create_model`.
    """
    variables = src if isinstance(src, dict) else read_checkpoint(src)
    variables = {k: v for k, v in variables.items() if not SKIP.search(k)}
    info = detect(variables)
    arch = arch or info["arch"]
    if arch is None:
        raise ConversionError(f"units per block {info['layers']} match no slim depth "
                              f"({', '.join(f'{d}: {ls}' for d, ls in SLIM_DEPTHS.items())}); pass arch= (CLI: --arch)")
    n = info["num_classes"]
    kwargs.setdefault("num_classes", (n - 1 if drop_background else n) if n else None)
    kwargs.setdefault("scope", info["scope"])
    model = create_model(arch, **kwargs)
    return load_slim_variables(model, variables, info["scope"], drop_background)
