"""torchvision ResNet state dicts -> resnetkit `resnet18` ... `resnet152`, `resnext50_32x4d`,
`resnext101_32x8d`, `resnext101_64x4d`, `wide_resnet50_2`, `wide_resnet101_2` (same layout, other names:
ResNeXt and Wide ResNet differ only in the width and groups of each bottleneck's 3x3)."""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from resnetkit.convert.common import ConversionError, load_mapped_state_dict
from resnetkit.models import create_model

# (torchvision pattern, resnetkit replacement). Keys under layerN.M. are rewritten with UNIT_MAP
# inside `blocks.blockN.unit_{M+1}.`; everything else with ROOT_MAP.
ROOT_MAP = [(r"^conv1\.weight$", "conv1.conv.weight"), (r"^bn1\.(.+)$", r"conv1.bn.\1"),
            (r"^fc\.(weight|bias)$", r"logits.\1")]
UNIT_MAP = [(r"^conv(\d)\.weight$", r"conv\1.conv.weight"), (r"^bn(\d)\.(.+)$", r"conv\1.bn.\2"),
            (r"^downsample\.0\.weight$", "shortcut.conv.weight"), (r"^downsample\.1\.(.+)$", r"shortcut.bn.\1")]


def map_key(key: str) -> str:
    """One torchvision key -> its resnetkit name; ConversionError for a key that has no place."""
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", key)
    if m:
        block, unit, rest = m.group(1), int(m.group(2)) + 1, m.group(3)
        prefix = f"blocks.block{block}.unit_{unit}."
        for pat, rep in UNIT_MAP:
            if re.match(pat, rest):
                return prefix + re.sub(pat, rep, rest)
    for pat, rep in ROOT_MAP:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    raise ConversionError(f"unknown torchvision key {key!r}: not a torchvision ResNet state dict? A timm one "
                          "needs kind='timm' (CLI: --from timm)")


def map_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key; the classifier's (K, C) weight becomes our 1x1 conv's (K, C, 1, 1)."""
    out = {}
    for k, v in state.items():
        name = map_key(k)
        out[name] = v[:, :, None, None] if k == "fc.weight" else v
    return out


# (units per layer, bottleneck, block1's 3x3 width, its groups) -> arch. The 3x3 weight of layer1.0 is
# (width, width / groups, 3, 3): 64 wide for ResNets, 128 for Wide ResNet-50-2 and ResNeXt-50 32x4d (32
# groups of 4), 256 for ResNeXt-101 32x8d (32 groups of 8) and 64x4d (64 groups of 4).
ARCHS = {
    ((2, 2, 2, 2), False, 64, 1): "resnet18", ((3, 4, 6, 3), False, 64, 1): "resnet34",
    ((3, 4, 6, 3), True, 64, 1): "resnet50", ((3, 4, 23, 3), True, 64, 1): "resnet101",
    ((3, 8, 36, 3), True, 64, 1): "resnet152",
    ((3, 4, 6, 3), True, 128, 32): "resnext50_32x4d", ((3, 4, 23, 3), True, 256, 32): "resnext101_32x8d",
    ((3, 4, 23, 3), True, 256, 64): "resnext101_64x4d",
    ((3, 4, 6, 3), True, 128, 1): "wide_resnet50_2", ((3, 4, 23, 3), True, 128, 1): "wide_resnet101_2",
}


def detect_arch(state: dict[str, torch.Tensor]) -> str:
    """The torchvision architecture from the number of units per layer, the unit kind and the width and
    groups of the first 3x3."""
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in state)
    w = state.get("layer1.0.conv2.weight")
    width, groups = (w.shape[0], w.shape[0] // w.shape[1]) if w is not None and w.dim() == 4 else (64, 1)
    arch = ARCHS.get((counts, bottleneck, width, groups))
    if arch is None:
        raise ConversionError(f"cannot tell the architecture of this torchvision state dict (units per "
                              f"layer {list(counts)}, bottleneck={bottleneck}, first 3x3 {width} wide in {groups} "
                              "groups); pass arch= (CLI: --arch)")
    return arch


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.pth` file, unpickled safely (weights_only=True): tensors and plain containers only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as e:  # corrupt, truncated, or a pickle that is more than weights
        raise ConversionError(f"{path}: not a readable torchvision checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors")
    return state


def from_torchvision(src: str | os.PathLike | dict, arch: str | None = None, **kwargs) -> nn.Module:
    """Build our model of torchvision's layout and load a torchvision state dict (or `.pth` path) into it."""
    state = src if isinstance(src, dict) else read_state_dict(src)
    arch = arch or detect_arch(state)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
    kwargs.setdefault("num_classes", num_classes)
    model = create_model(arch, **kwargs)
    return load_mapped_state_dict(model, map_state_dict(state), source="torchvision state dict")
