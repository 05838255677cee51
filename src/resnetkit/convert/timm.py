"""timm ResNet / ResNetV2 state dicts -> resnetkit (timm is an oracle for the residual family: same
architectures, same parameter counts, other names).

Two timm layouts:
  resnet.py   (`resnet50`, `resnet50d`, `resnext50_32x4d`, `seresnet50`, `wide_resnet50_2`, ...): the
              torchvision names plus a deep root (`conv1.0/1/3/4/6`, then `bn1`), an avg-pool downsample
              (`downsample.0` is the pool, so the conv and BN are `.1` and `.2`) and SE (`se.fc1/fc2`).
  resnetv2.py (`resnetv2_50x1_bit`, ...): `stem.conv`, `stages.S.blocks.B.{norm1,conv1,norm2,...}`, the
              projection `downsample.conv`, the post-norm `norm` and a 1x1-conv head `head.fc`.
A pre-activation unit's norm k+1 follows its conv k, which is our `conv{k}.bn`; its norm1 is our
`preact_bn`. The only tensor transform: a Linear classifier (K, C) becomes our 1x1 logits conv (K, C, 1, 1).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from resnetkit._helpers import first_few
from resnetkit.convert.common import ConversionError, load_mapped_state_dict
from resnetkit.convert.torchvision import ROOT_MAP, UNIT_MAP, read_state_dict
from resnetkit.models import create_model, list_models, model_defaults

# (timm pattern, resnetkit replacement), tried in order; the first that matches wins. timm's resnet.py
# names its stem and units as torchvision does, plus SE and the variants' extra stem and shortcut layers.
RESNET_ROOT = ROOT_MAP
# Deep root: Sequential(conv, bn, relu, conv, bn, relu, conv), then bn1 -> our three ConvBn.
RESNET_DEEP_ROOT = [
    (r"^conv1\.0\.weight$", "conv1.0.conv.weight"),
    (r"^conv1\.1\.(.+)$", r"conv1.0.bn.\1"),
    (r"^conv1\.3\.weight$", "conv1.1.conv.weight"),
    (r"^conv1\.4\.(.+)$", r"conv1.1.bn.\1"),
    (r"^conv1\.6\.weight$", "conv1.2.conv.weight"),
    (r"^bn1\.(.+)$", r"conv1.2.bn.\1"),
    (r"^fc\.(weight|bias)$", r"logits.\1"),
]
# Inside `layerN.M.` -> `blocks.blockN.unit_{M+1}.`
RESNET_UNIT = [*UNIT_MAP, (r"^se\.(fc[12]\.(weight|bias))$", r"se.\1")]
RESNET_AVG_DOWN_UNIT = [  # downsample.0 is the (parameter-free) average pool
    (r"^downsample\.1\.weight$", "shortcut.conv.weight"),
    (r"^downsample\.2\.(.+)$", r"shortcut.bn.\1"),
] + [(p, r) for p, r in RESNET_UNIT if not p.startswith(r"^downsample")]
RESNETV2_ROOT = [
    (r"^stem\.conv\.weight$", "conv1.weight"),
    (r"^norm\.(.+)$", r"postnorm.\1"),
    (r"^head\.fc\.(weight|bias)$", r"logits.\1"),
]
# Inside `stages.S.blocks.B.` -> `blocks.block{S+1}.unit_{B+1}.`
RESNETV2_UNIT = [
    (r"^norm1\.(.+)$", r"preact_bn.\1"),
    (r"^conv([12])\.weight$", r"conv\1.conv.weight"),
    (r"^conv3\.weight$", "conv3.weight"),  # no normaliser after it: a bare conv
    (r"^norm([23])\.(.+)$", lambda m: f"conv{int(m.group(1)) - 1}.bn.{m.group(2)}"),
    (r"^downsample\.conv\.weight$", "shortcut.weight"),
]
# Families whose registered names timm shares (the TF-slim and CIFAR nets have no timm counterpart).
FAMILIES = ("torchvision", "timm", "bit")


def _sub(table, key: str) -> str | None:
    for pat, rep in table:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def layout(state: dict[str, torch.Tensor]) -> dict[str, bool]:
    """What the keys say about the net: timm's resnetv2 (pre-activation) or resnet, deep root, avg-pool
    downsampling."""
    return dict(v2=any(k.startswith("stages.") for k in state), deep="conv1.0.weight" in state,
                avg_down=any(re.search(r"\.downsample\.2\.", k) for k in state))


def map_key(key: str, lay: dict[str, bool]) -> str | None:
    """One timm key -> its resnetkit name, or None when it has no place in our nets."""
    if lay["v2"]:
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
        if m:
            rest = _sub(RESNETV2_UNIT, m.group(3))
            return rest and f"blocks.block{int(m.group(1)) + 1}.unit_{int(m.group(2)) + 1}.{rest}"
        return _sub(RESNETV2_ROOT, key)
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", key)
    if m:
        rest = _sub(RESNET_AVG_DOWN_UNIT if lay["avg_down"] else RESNET_UNIT, m.group(3))
        return rest and f"blocks.block{m.group(1)}.unit_{int(m.group(2)) + 1}.{rest}"
    return _sub(RESNET_DEEP_ROOT if lay["deep"] else RESNET_ROOT, key)


def map_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key; ConversionError in one line listing the keys that have no place in our nets."""
    lay = layout(state)
    out, unmapped = {}, []
    for k, v in state.items():
        name = map_key(k, lay)
        if name is None:
            unmapped.append(k)
            continue
        # A Linear classifier (K, C) -> our 1x1 logits conv (K, C, 1, 1); resnetv2's head is a conv already.
        out[name] = v[:, :, None, None] if name == "logits.weight" and v.dim() == 2 else v
    if unmapped:
        raise ConversionError(f"{len(unmapped)} timm keys did not map onto a resnetkit architecture: "
                              f"{first_few(unmapped)} (resnetkit has timm's resnet/resnext/wide/se/-c/-d and "
                              "BiT resnetv2 layouts only)")
    return out


def _shapes(d) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in d.items() if not k.endswith("num_batches_tracked")}


@functools.cache
def _signature(name: str) -> tuple[dict[str, tuple], bool]:
    """A registered model's (headless) state dict shapes and whether it average-pools in its shortcuts."""
    with torch.device("meta"):
        model = create_model(name, num_classes=None)
    avg_down = any(getattr(m, "shortcut_pool", None) is not None for m in model.modules())  # shortcut 'D'
    return _shapes(model.state_dict()), avg_down


def detect_arch(state: dict[str, torch.Tensor]) -> str:
    """The registered architecture whose state dict has exactly the mapped keys and shapes (built on the
    meta device, so trying every candidate costs milliseconds); avg-pool downsampling, which has no
    parameters, is read off timm's key numbering."""
    mapped, lay = map_state_dict(state), layout(state)
    want = {k: v for k, v in _shapes(mapped).items() if not k.startswith("logits.")}
    for name in list_models(task="classification"):
        if model_defaults(name)["family"] in FAMILIES and _signature(name) == (want, lay["avg_down"]):
            return name
    # No match: name the timm keys that do not fit the closest candidate, so the message says what is foreign.
    scores = {name: (len(want.items() & _signature(name)[0].items()), _signature(name)[1] == lay["avg_down"])
              for name in list_models(task="classification") if model_defaults(name)["family"] in FAMILIES}
    best = max(scores, key=scores.get)
    theirs = _signature(best)[0]
    ours_to_timm = {map_key(k, lay): k for k in state}
    foreign = [ours_to_timm[k] for k in want if theirs.get(k) != want[k]]
    missing = [k for k in theirs if k not in want]
    parts = ([f"{len(foreign)} timm keys have no place in it: {first_few(foreign)}"] if foreign else []) + \
        ([f"it has {len(missing)} tensors the state dict lacks: {first_few(missing, 3)}"] if missing else [])
    raise ConversionError(f"this timm state dict matches no resnetkit architecture (closest: {best}; "
                          f"{'; '.join(parts)})")


def _empty_model(arch: str, **kwargs) -> nn.Module:
    """`create_model(arch)` without its random init (the state dict overwrites every value anyway): built on
    the meta device, then given uninitialised CPU storage. Saves seconds on the large nets."""
    with torch.device("meta"):
        model = create_model(arch, **kwargs)
    model.to_empty(device="cpu")  # in place: the module (and its .config) stays
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()  # not in every foreign state dict; the loader keeps the model's own
    return model


def read_timm_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A timm checkpoint: `model.safetensors` (the Hugging Face hub's format) or a torch `.pth`/`.bin`."""
    if Path(path).suffix == ".safetensors":
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise ConversionError(f"{path}: no such file") from None
        except Exception as e:  # not a safetensors file, or a truncated one
            raise ConversionError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    return read_state_dict(path)


def from_timm(src: str | os.PathLike | dict, arch: str | None = None, **kwargs) -> nn.Module:
    """Build our model of `arch` (timm's registered name, e.g. 'resnet50d'; default: detected from the
    keys and shapes) and load a timm state dict (or a `.safetensors` / `.pth` path) into it, strictly."""
    state = src if isinstance(src, dict) else read_timm_state_dict(src)
    mapped = map_state_dict(state)
    arch = arch or detect_arch(state)
    kwargs.setdefault("num_classes", mapped["logits.weight"].shape[0] if "logits.weight" in mapped else None)
    model = _empty_model(arch, **kwargs)
    return load_mapped_state_dict(model, mapped, source="timm state dict")
