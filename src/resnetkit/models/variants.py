"""The published ResNets as block specs.

Three layouts:
  * TF-slim (`resnet_v1_50`, `resnet_v2_50`, ...): stride in the last unit of blocks 1-3, TF 'SAME'
    root pool; v2 has a biased root conv and a post-norm. Numerically identical to slim's nets.
  * torchvision (`resnet18` ... `resnet152`): ResNet "v1.5", stride in the first unit of blocks 2-4,
    symmetric root pool padding; parameter names map one to one onto torchvision's state dicts.
  * CIFAR (`resnet20` ... `resnet1202`, `preact_resnet110/164/1001`, `plain20` ...): 3x3 root with 16
    channels, three stages of 16/32/64 (x4 for bottlenecks), 6n+2 or 9n+2 layers.

The residual family after 2016, as timm and torchvision name it (same layouts, same parameter counts),
each a torchvision-layout spec with unit options (see `units`):
  * ResNet-C / -D (He et al. 2019, 'Bag of Tricks'): `resnet50c` (deep 3x3 root), `resnet18d` ...
    `resnet152d` (deep root and avg-pool downsampling, shortcut 'D').
  * ResNeXt (Xie et al. 2017) `resnext50_32x4d` ..., Wide ResNet-50/101-2 (torchvision), SE-ResNet /
    SE-ResNeXt (Hu et al. 2018) `seresnet50`, `seresnext50_32x4d`.
  * BiT ResNetV2 (Kolesnikov et al. 2020) `resnetv2_50x1_bit` ...: pre-activation bottlenecks, stride
    first, GroupNorm and weight-standardised convs, no biases, Keras-style zero-padded root pool.
  * CIFAR Wide ResNets (Zagoruyko and Komodakis 2016) `wrn28_10`, `wrn16_8`: pre-activation basic units
    16k/32k/64k wide, (d-4)/6 per stage, projection shortcuts, optional dropout between the convs.
Every builder takes `drop_path_rate=` (stochastic depth) and `features_only=` / `out_indices=`.
"""

from __future__ import annotations

import functools

from resnetkit.models import units
from resnetkit.models.blocks import Block, _units, resnet_v1_block, resnet_v2_block
from resnetkit.models.registry import register_model
from resnetkit.models.resnet import ResNet

SLIM_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
BASIC_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def slim_blocks(version: int, layers: tuple[int, ...]) -> list[Block]:
    """slim's resnet_v{1,2}_N bodies: base depths 64/128/256/512, strides 2/2/2/1 in the last unit."""
    make = resnet_v1_block if version == 1 else resnet_v2_block
    return [make(f"block{i + 1}", 64 * 2**i, n, 2 if i < 3 else 1) for i, n in enumerate(layers)]


def torchvision_blocks(unit_fn, layers: tuple[int, ...], bottleneck: bool, width: int = 64,
                       **unit_args) -> list[Block]:
    """torchvision's layer1..4 as Blocks: stride 2 in the FIRST unit of blocks 2-4. `width` is block1's
    base depth (BiT's width factor multiplies it); `unit_args` go to every unit (cardinality, se_ratio)."""
    blocks = []
    for i, n in enumerate(layers):
        base, stride = width * 2**i, (1 if i == 0 else 2)
        extra = dict(depth_bottleneck=base, **unit_args) if bottleneck else dict(unit_args)
        blocks.append(Block(f"block{i + 1}", unit_fn,
                            _units(base * 4 if bottleneck else base, n, stride, True, **extra)))
    return blocks


def cifar_blocks(unit_fn, n: int, bottleneck: bool = False, widen: int = 1, **unit_args) -> list[Block]:
    """Three stages of n units, 16/32/64 channels (x4 outputs for bottlenecks; x`widen` for Wide ResNets),
    stride 2 entering stages 2 and 3."""
    blocks = []
    for i, base in enumerate((16 * widen, 32 * widen, 64 * widen)):
        extra = dict(depth_bottleneck=base, **unit_args) if bottleneck else dict(unit_args)
        blocks.append(Block(f"block{i + 1}", unit_fn,
                            _units(base * 4 if bottleneck else base, n, 1 if i == 0 else 2, True, **extra)))
    return blocks


def _slim(version: int, depth: int, name: str, **kw) -> ResNet:
    kw.setdefault("scope", name)
    kw.setdefault("root_pool", "same")  # overridable: Keras' ResNetV2 is this net with root_pool='keras'
    return ResNet(slim_blocks(version, SLIM_DEPTHS[depth]), preact=version == 2, **kw)


def _torchvision(depth: int, name: str, plain: bool = False, **kw) -> ResNet:
    kw.setdefault("scope", name)
    if plain and kw.get("shortcut") is not None:
        raise ValueError("plain networks have no shortcuts; use the resnet of the same depth")
    if depth in BASIC_DEPTHS:
        unit_fn = units.plain_basic_v1 if plain else units.basic_v1
        blocks = torchvision_blocks(unit_fn, BASIC_DEPTHS[depth], bottleneck=False)
    else:
        unit_fn = units.plain_bottleneck_v1 if plain else units.bottleneck_v1
        blocks = torchvision_blocks(unit_fn, SLIM_DEPTHS[depth], bottleneck=True)
    return ResNet(blocks, root_pool="torch", **kw)


def _cifar(unit_fn, n: int, name: str, bottleneck: bool = False, preact: bool = False,
           default_shortcut: str | None = "A", **kw) -> ResNet:
    kw.setdefault("scope", name)
    kw.setdefault("num_classes", 10)
    if default_shortcut is None and kw.get("shortcut") is not None:
        raise ValueError("plain networks have no shortcuts; use the resnet of the same depth")
    kw.setdefault("shortcut", default_shortcut)
    return ResNet(cifar_blocks(unit_fn, n, bottleneck), root="cifar", root_depth=16, preact=preact, **kw)


def _variant(name: str, build, doc: str, *, family: str, imagenet: bool = True, **defaults) -> None:
    """Register `name`: a builder that calls `build(**defaults, **kw)` (timm's two-line builders, made in
    a loop); ImageNet nets default to 224 px and 1000 classes, CIFAR nets to 32 px and 10."""

    def fn(**kw):
        return build(**dict(defaults, **kw))

    fn.__name__, fn.__doc__ = name, doc
    register_model(fn, input_size=224 if imagenet else 32, num_classes=1000 if imagenet else 10, family=family)


# --- TF-slim layout --------------------------------------------------------------------------------
def _register_slim():
    for version in (1, 2):
        for depth in SLIM_DEPTHS:
            name = f"resnet_v{version}_{depth}"
            _variant(name, functools.partial(_slim, version, depth, name),
                     f"TF-slim {name}: bottleneck v{version} units, layers {SLIM_DEPTHS[depth]}.", family="tf-slim")


# --- torchvision layout ----------------------------------------------------------------------------
def _register_torchvision():
    for depth in (18, 34, 50, 101, 152):
        _variant(f"resnet{depth}", functools.partial(_torchvision, depth, f"resnet{depth}"),
                 f"torchvision resnet{depth} (v1.5: stride in the first unit's 3x3).", family="torchvision")
    for depth in (18, 34):
        _variant(f"plain{depth}", functools.partial(_torchvision, depth, f"plain{depth}", plain=True),
                 f"Plain {depth}-layer ImageNet net of He et al. 2015, Table 2 (no shortcuts).", family="plain")


# --- CIFAR -----------------------------------------------------------------------------------------
def _register_cifar():
    for depth in (20, 32, 44, 56, 110, 1202):
        n = (depth - 2) // 6
        for prefix, unit_fn, shortcut, family in (("resnet", units.basic_v1, "A", "cifar"),
                                                  ("plain", units.plain_basic_v1, None, "plain")):
            if prefix == "plain" and depth == 1202:
                continue
            name = f"{prefix}{depth}"
            _variant(name, functools.partial(_cifar, unit_fn, n, name, default_shortcut=shortcut),
                     f"CIFAR {name}: 3 stages of {n} basic units (6n+2 layers).", family=family, imagenet=False)

    def preact_resnet110(**kw):
        """Pre-activation ResNet-110 (He et al. 2016): 3 stages of 18 basic v2 units, option A."""
        return _cifar(units.basic_v2, 18, "preact_resnet110", preact=True, default_shortcut="A", **kw)

    register_model(preact_resnet110, input_size=32, num_classes=10, family="cifar")
    for depth in (164, 1001):
        n, name = (depth - 2) // 9, f"preact_resnet{depth}"
        _variant(name, functools.partial(_cifar, units.bottleneck_v2, n, name, bottleneck=True, preact=True,
                                         default_shortcut="B"),
                 f"Pre-activation ResNet-{depth}: 3 stages of {n} bottleneck v2 units (9n+2 layers).",
                 family="cifar", imagenet=False)


# --- the residual family after 2016 (timm's and torchvision's names) --------------------------------
# name -> (depth, the builder's options). Units: 'basic' or 'bottleneck'; `unit_args` go to every unit.
DEEP_D = dict(root="deep", shortcut="D")  # Bag of Tricks' ResNet-D: deep root + avg-pool downsampling
FAMILY = {
    "resnet18d": (18, dict(DEEP_D), "timm"),
    "resnet34d": (34, dict(DEEP_D), "timm"),
    "resnet50c": (50, dict(root="deep"), "timm"),
    "resnet50d": (50, dict(DEEP_D), "timm"),
    "resnet101d": (101, dict(DEEP_D), "timm"),
    "resnet152d": (152, dict(DEEP_D), "timm"),
    "resnext50_32x4d": (50, dict(unit_args=dict(cardinality=32, base_width=4)), "torchvision"),
    "resnext101_32x8d": (101, dict(unit_args=dict(cardinality=32, base_width=8)), "torchvision"),
    "resnext101_64x4d": (101, dict(unit_args=dict(cardinality=64, base_width=4)), "torchvision"),
    "wide_resnet50_2": (50, dict(unit_args=dict(base_width=128)), "torchvision"),
    "wide_resnet101_2": (101, dict(unit_args=dict(base_width=128)), "torchvision"),
    "seresnet50": (50, dict(unit_args=dict(se_ratio=1 / 16)), "timm"),
    "seresnext50_32x4d": (50, dict(unit_args=dict(cardinality=32, base_width=4, se_ratio=1 / 16)), "timm"),
}
# BiT: name -> (depth, width factor)
BIT = {"resnetv2_50x1_bit": (50, 1), "resnetv2_101x1_bit": (101, 1), "resnetv2_50x3_bit": (50, 3)}
# timm's own pre-activation ResNets: BiT's layout with BatchNorm, plain convs and torchvision's root pool.
TIMM_V2 = {"resnetv2_50": 50, "resnetv2_101": 101}
# CIFAR Wide ResNets WRN-d-k: name -> (d, k)
WRN = {"wrn16_8": (16, 8), "wrn28_10": (28, 10)}


def _family(depth: int, name: str, unit_args: dict | None = None, **kw) -> ResNet:
    """torchvision's layout with unit options: ResNet-C/D, ResNeXt, Wide ResNet, SE-ResNet(Xt)."""
    kw.setdefault("scope", name)
    if kw.get("root") == "deep":
        kw.setdefault("root_pool", "torch")
    bottleneck = depth not in BASIC_DEPTHS
    unit_fn = units.bottleneck_v1 if bottleneck else units.basic_v1
    layers = SLIM_DEPTHS[depth] if bottleneck else BASIC_DEPTHS[depth]
    return ResNet(torchvision_blocks(unit_fn, layers, bottleneck, **(unit_args or {})),
                  **dict(dict(root_pool="torch"), **kw))


def _bit(depth: int, width_factor: int, name: str, **kw) -> ResNet:
    """BiT's ResNetV2 (timm's `_create_resnetv2_bit`): v2 bottlenecks, stride in the first unit's 3x3,
    GroupNorm(32) and weight-standardised convs (eps 1e-8) without biases, a 7x7/2 root conv, and a 3x3/2
    max pool after zero padding of 1 (BiT's 'fixed' SAME approximation: Keras' root pool)."""
    kw.setdefault("scope", name)
    blocks = torchvision_blocks(units.bottleneck_v2, SLIM_DEPTHS[depth], True, width=64 * width_factor)
    return ResNet(blocks, **dict(dict(preact=True, root_depth=64 * width_factor, root_pool="keras", norm="gn",
                                      weight_std=True, v2_bias=False), **kw))


def _wrn(depth: int, widen: int, name: str, dropout: float = 0.0, **kw) -> ResNet:
    """WRN-d-k (Zagoruyko and Komodakis 2016, table 1): a 3x3 root of 16, three stages of (d-4)/6
    pre-activation basic units 16k/32k/64k wide, 1x1 projections where the width changes (reading the
    pre-activation), no conv biases, `dropout` between each unit's two 3x3 convs (0.3 in the paper's
    CIFAR runs)."""
    kw.setdefault("scope", name)
    kw.setdefault("num_classes", 10)
    blocks = cifar_blocks(units.basic_v2, (depth - 4) // 6, widen=widen, dropout=dropout)
    return ResNet(blocks, **dict(dict(root="cifar", root_depth=16, preact=True, v2_bias=False, shortcut="B"), **kw))


def _register_family():
    for name, (depth, opts, family) in FAMILY.items():
        _variant(name, functools.partial(_family, depth, name), f"{name} ({family}'s): depth {depth}, {opts}.",
                 family=family, **opts)
    for name, (depth, wf) in BIT.items():
        _variant(name, functools.partial(_bit, depth, wf, name),
                 f"BiT ResNetV2-{depth}x{wf} (Kolesnikov et al. 2020): GroupNorm + weight standardisation.",
                 family="bit")
    for name, depth in TIMM_V2.items():
        _variant(name, functools.partial(_bit, depth, 1, name),
                 f"timm's {name}: pre-activation bottlenecks (stride first, no conv biases) with BatchNorm.",
                 family="timm", norm="bn", weight_std=False, root_pool="torch")
    for name, (depth, k) in WRN.items():
        _variant(name, functools.partial(_wrn, depth, k, name),
                 f"Wide ResNet WRN-{depth}-{k} for CIFAR (pre-activation basic units, `dropout=` option).",
                 family="cifar", imagenet=False)


_register_slim()
_register_torchvision()
_register_cifar()
_register_family()
