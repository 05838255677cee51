"""The published ResNets as block specs.

Three layouts:
  * TF-slim (`resnet_v1_50`, `resnet_v2_50`, ...): stride in the last unit of blocks 1-3, TF 'SAME'
    root pool; v2 has a biased root conv and a post-norm. Numerically identical to slim's nets.
  * torchvision (`resnet18` ... `resnet152`): ResNet "v1.5", stride in the first unit of blocks 2-4,
    symmetric root pool padding; parameter names map one to one onto torchvision's state dicts.
  * CIFAR (`resnet20` ... `resnet1202`, `preact_resnet110/164/1001`, `plain20` ...): 3x3 root with 16
    channels, three stages of 16/32/64 (x4 for bottlenecks), 6n+2 or 9n+2 layers.
"""

from __future__ import annotations

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


def torchvision_blocks(unit_fn, layers: tuple[int, ...], bottleneck: bool) -> list[Block]:
    """torchvision's layer1..4 as Blocks: stride 2 in the FIRST unit of blocks 2-4."""
    blocks = []
    for i, n in enumerate(layers):
        base, stride = 64 * 2**i, (1 if i == 0 else 2)
        extra = dict(depth_bottleneck=base) if bottleneck else {}
        blocks.append(Block(f"block{i + 1}", unit_fn,
                            _units(base * 4 if bottleneck else base, n, stride, True, **extra)))
    return blocks


def cifar_blocks(unit_fn, n: int, bottleneck: bool = False) -> list[Block]:
    """Three stages of n units, 16/32/64 channels (x4 outputs for bottlenecks), stride 2 entering
    stages 2 and 3."""
    blocks = []
    for i, base in enumerate((16, 32, 64)):
        extra = dict(depth_bottleneck=base) if bottleneck else {}
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


# --- TF-slim layout --------------------------------------------------------------------------------
def _register_slim():
    for version in (1, 2):
        for depth in SLIM_DEPTHS:
            name = f"resnet_v{version}_{depth}"

            def fn(_v=version, _d=depth, _n=name, **kw):
                return _slim(_v, _d, _n, **kw)

            fn.__name__ = name
            fn.__doc__ = f"TF-slim {name}: bottleneck v{version} units, layers {SLIM_DEPTHS[depth]}."
            register_model(fn, input_size=224, num_classes=1000, family="tf-slim")


# --- torchvision layout ----------------------------------------------------------------------------
def _register_torchvision():
    for depth in (18, 34, 50, 101, 152):
        name = f"resnet{depth}"

        def fn(_d=depth, _n=name, **kw):
            return _torchvision(_d, _n, **kw)

        fn.__name__ = name
        fn.__doc__ = f"torchvision {name} (v1.5: stride in the first unit's 3x3)."
        register_model(fn, input_size=224, num_classes=1000, family="torchvision")
    for depth in (18, 34):
        name = f"plain{depth}"

        def fn(_d=depth, _n=name, **kw):
            return _torchvision(_d, _n, plain=True, **kw)

        fn.__name__ = name
        fn.__doc__ = f"Plain {depth}-layer ImageNet net of He et al. 2015, Table 2 (no shortcuts)."
        register_model(fn, input_size=224, num_classes=1000, family="plain")


# --- CIFAR -----------------------------------------------------------------------------------------
def _register_cifar():
    for depth in (20, 32, 44, 56, 110, 1202):
        n = (depth - 2) // 6
        for prefix, unit_fn, shortcut, family in (("resnet", units.basic_v1, "A", "cifar"),
                                                  ("plain", units.plain_basic_v1, None, "plain")):
            if prefix == "plain" and depth == 1202:
                continue
            name = f"{prefix}{depth}"

            def fn(_u=unit_fn, _n=n, _name=name, _s=shortcut, **kw):
                return _cifar(_u, _n, _name, default_shortcut=_s, **kw)

            fn.__name__ = name
            fn.__doc__ = f"CIFAR {name}: 3 stages of {n} basic units (6n+2 layers)."
            register_model(fn, input_size=32, num_classes=10, family=family)

    def preact_resnet110(**kw):
        """Pre-activation ResNet-110 (He et al. 2016): 3 stages of 18 basic v2 units, option A."""
        return _cifar(units.basic_v2, 18, "preact_resnet110", preact=True, default_shortcut="A", **kw)

    register_model(preact_resnet110, input_size=32, num_classes=10, family="cifar")
    for depth in (164, 1001):
        n = (depth - 2) // 9
        name = f"preact_resnet{depth}"

        def fn(_n=n, _name=name, **kw):
            return _cifar(units.bottleneck_v2, _n, _name, bottleneck=True, preact=True, default_shortcut="B", **kw)

        fn.__name__ = name
        fn.__doc__ = f"Pre-activation ResNet-{depth}: 3 stages of {n} bottleneck v2 units (9n+2 layers)."
        register_model(fn, input_size=32, num_classes=10, family="cifar")


_register_slim()
_register_torchvision()
_register_cifar()
