"""The ResNet generator: a root, a list of Blocks stacked densely (TF-slim's `stack_blocks_dense`),
an optional post-norm (v2) and a head. Tensors are NCHW throughout.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from resnetkit.layers import NORMS, MaxPool2dSame, norm2d
from resnetkit.models.blocks import Block
from resnetkit.models.features import FeatureInfo, check_out_indices
from resnetkit.models.units import ConvBn, conv

ROOTS = ("imagenet", "cifar", "deep")
ROOT_POOLS = ("same", "torch", "keras", "none")


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class ZeroPadMaxPool(nn.Module):
    """Keras' root pool: ZeroPadding2D(1) then a 3x3/2 'VALID' max pool (zeros CAN win here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)


class ResNet(nn.Module):
    """A residual network built from Block specs.

    Args:
        blocks: the body, a list of `Block(scope, unit_fn, args)`.
        num_classes: size of the 1x1-conv logits layer; None returns features (no logits).
        global_pool: average over space before the logits (False: fully convolutional).
        output_stride: the ratio of input to output resolution; strides beyond it become atrous rates
            on the 3x3 convolutions (slim's rules: a multiple of the root's stride of 4, and a
            ValueError when it cannot be reached).
        include_root_block: False starts directly with the blocks (inputs must have block1's depth or
            any depth: the first unit adapts).
        spatial_squeeze: squeeze (N, K, 1, 1) logits to (N, K).
        root: 'imagenet' (7x7/2 conv + 3x3/2 pool), 'cifar' (3x3/1 conv, no pool) or 'deep' (three 3x3
            convs of root_depth/2, root_depth/2 and root_depth channels, the first strided, + the pool:
            ResNet-C/D of He et al. 2019, timm's `stem_type='deep'`).
        root_pool: 'same' (TF 'SAME', slim), 'torch' (symmetric padding 1, torchvision),
            'keras' (zero padding 1), or 'none'.
        preact: v2 layout: root conv with no BN/ReLU (a bias unless v2_bias=False), a norm+ReLU 'postnorm'
            after the blocks.
        in_chans: input channels. root_depth: channels of the root conv.
        scope: prefix of end point names ('resnet_v2_50').
        shortcut: 'A', 'B' or 'C' (paper, section 4.1), or 'D' (avg-pool downsampling, ResNet-D) for every
            unit; None keeps each unit's default.
        unit_kwargs: more options passed to every unit_fn that accepts them (bn_eps, bn_momentum).
        zero_init_residual: start each residual branch's last layer at zero (Goyal et al. 2017).
        drop_rate: dropout before the logits.
        norm: 'bn' (BatchNorm) or 'gn' (GroupNorm, 32 groups) everywhere, root and post-norm included.
        weight_std: weight-standardised convolutions everywhere but the logits (BiT).
        v2_bias: v2 convolutions that no normaliser follows (root, conv3, projection) have a bias (slim);
            False for BiT, timm's resnetv2 and the Wide ResNets.
        drop_path_rate: stochastic depth; unit i of n drops its branch with rate drop_path_rate * i / (n-1)
            (linear over depth, 0 for the first unit: timm's rule).
        features_only: the net becomes a feature extractor: `forward` returns the outputs of the stages
            in `out_indices` as a list (see `feature_info`); no post-norm, no head, no later blocks.
        out_indices: feature_info indices to return (0 the root conv, i block i); default every block.
    """

    def __init__(self, blocks: Sequence[Block], *, num_classes: int | None = 1000, global_pool: bool = True,
                 output_stride: int | None = None, include_root_block: bool = True,
                 spatial_squeeze: bool = True, root: str = "imagenet", root_pool: str = "same",
                 preact: bool = False, in_chans: int = 3, root_depth: int = 64, scope: str = "resnet",
                 shortcut: str | None = None, unit_kwargs: dict | None = None, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, zero_init_residual: bool = False, drop_rate: float = 0.0,
                 norm: str = "bn", weight_std: bool = False, v2_bias: bool = True, drop_path_rate: float = 0.0,
                 features_only: bool = False, out_indices: Sequence[int] | None = None):
        super().__init__()
        if root not in ROOTS:
            raise ValueError(f"root must be one of {ROOTS}, got {root!r}")
        if root_pool not in ROOT_POOLS:
            raise ValueError(f"root_pool must be one of {ROOT_POOLS}, got {root_pool!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if out_indices is not None and not features_only:
            raise ValueError("out_indices selects the outputs of features_only=True; pass that too")
        if features_only:
            num_classes = None
        self.scope, self.num_classes, self.global_pool = scope, num_classes, global_pool
        self.spatial_squeeze, self.preact, self.drop_rate = spatial_squeeze, preact, drop_rate
        self.output_stride, self.in_chans = output_stride, in_chans
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        # Only what differs from the units' defaults is passed, so user-defined unit_fns see no new kwargs.
        style = {k: v for k, v in dict(norm=norm, weight_std=weight_std, v2_bias=v2_bias).items()
                 if v != dict(norm="bn", weight_std=False, v2_bias=True)[k]}

        # --- root: (N, in_chans, H, W) -> (N, root_depth, H/4, W/4) for ImageNet, H/1 for CIFAR
        root_stride = 1
        if include_root_block:
            self.conv1 = self._root(root, in_chans, root_depth, preact, v2_bias,
                                    dict(bn, norm=norm, weight_std=weight_std))
            root_stride = 1 if root == "cifar" else 2
            # index 0 of feature_info: the root conv's output, before the pool
            self.feature_info = FeatureInfo([dict(num_chs=root_depth, reduction=root_stride, module="conv1",
                                                  end_point=f"{scope}/conv1")])
            self.pool1 = None
            if root != "cifar" and root_pool != "none":
                self.pool1 = {"same": MaxPool2dSame(3, 2), "torch": nn.MaxPool2d(3, 2, 1),
                              "keras": ZeroPadMaxPool()}[root_pool]
                root_stride *= 2
            depth = root_depth
        else:
            self.conv1 = self.pool1 = None
            depth = in_chans
            self.feature_info = FeatureInfo([dict(num_chs=in_chans, reduction=1, module="", end_point="inputs")])
        self.include_root_block = include_root_block

        if output_stride is not None:
            if output_stride % root_stride != 0:
                raise ValueError(f"output_stride must be a multiple of {root_stride} (the root block's "
                                 f"stride), got {output_stride}")
            target = output_stride // root_stride
        else:
            target = None

        # --- body: slim's stack_blocks_dense, deciding strides and rates at build time
        unit_kwargs = dict(bn, **style, **(unit_kwargs or {}))
        if shortcut is not None:
            unit_kwargs["shortcut"] = shortcut
        self.blocks = nn.Sequential()
        current_stride, rate = 1, 1
        n_units, unit_index = sum(len(b.args) for b in blocks), 0
        for block in blocks:
            units = nn.Sequential()
            for i, args in enumerate(block.args):
                args = dict(args)
                stride = args.pop("stride", 1)
                kw = {k: v for k, v in unit_kwargs.items() if _accepts(block.unit_fn, k)}
                if drop_path_rate and _accepts(block.unit_fn, "drop_path"):
                    kw["drop_path"] = drop_path_rate * unit_index / max(n_units - 1, 1)
                unit_index += 1
                if target is not None and current_stride == target:
                    # Past the target stride: keep resolution, dilate the following 3x3 convs instead.
                    if stride > 1 and _accepts(block.unit_fn, "output_rate"):
                        kw["output_rate"] = rate * stride
                    unit = block.unit_fn(depth, stride=1, rate=rate, **args, **kw)
                    rate *= stride
                else:
                    unit = block.unit_fn(depth, stride=stride, rate=1, **args, **kw)
                    current_stride *= stride
                    if target is not None and current_stride > target:
                        raise ValueError(f"the target output_stride {output_stride} cannot be reached")
                depth = getattr(unit, "out_channels", args.get("depth"))
                units.add_module(f"unit_{i + 1}", unit)
            self.blocks.add_module(block.scope, units)
            self.feature_info.append(dict(num_chs=depth, reduction=root_stride * current_stride,
                                          module=f"blocks.{block.scope}", end_point=f"{scope}/{block.scope}"))
        if target is not None and current_stride != target:
            raise ValueError(f"the target output_stride {output_stride} cannot be reached (the blocks "
                             f"stride by {root_stride * current_stride} in all)")

        self.postnorm = norm2d(norm, depth, bn_eps, bn_momentum) if preact else None
        self.num_features = depth
        self.out_indices = None
        if features_only:
            self._keep_features(out_indices)
        self.logits = nn.Conv2d(self.num_features, num_classes, 1) if num_classes else None
        self._init_weights(zero_init_residual)

    @staticmethod
    def _root(root: str, in_chans: int, depth: int, preact: bool, v2_bias: bool, bn: dict) -> nn.Module:
        """The root convolution(s), without the pool. v2 ends on a bare conv (the first unit's preact
        norm follows it); v1 on conv + norm + ReLU."""

        def last(cin: int, k: int, s: int) -> nn.Module:
            if preact:
                return conv(cin, depth, k, s, bias=v2_bias, weight_std=bn["weight_std"])
            return ConvBn(cin, depth, k, s, **bn)

        if root != "deep":
            return last(in_chans, *((7, 2) if root == "imagenet" else (3, 1)))
        # (N, C, H, W) -> (N, depth/2, H/2, W/2) -> (N, depth/2, H/2, W/2) -> (N, depth, H/2, W/2)
        return nn.Sequential(ConvBn(in_chans, depth // 2, 3, 2, **bn), ConvBn(depth // 2, depth // 2, 3, **bn),
                             last(depth // 2, 3, 1))

    def _keep_features(self, out_indices: Sequence[int] | None) -> None:
        """Turn this net into a feature extractor: keep the stages up to the last one wanted."""
        self.out_indices = check_out_indices(out_indices, len(self.feature_info))
        last = max(self.out_indices)
        names = [name for name, _ in self.blocks.named_children()]
        for name in names[last:]:  # blocks after the last wanted stage would only hold unused parameters
            delattr(self.blocks, name)
        self.postnorm, self.global_pool = None, False
        self.num_features = self.feature_info[last]["num_chs"]
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)

    # ------------------------------------------------------------------ init
    def _init_weights(self, zero_init_residual: bool) -> None:
        """He et al. 2015 ('MSRA') init for convolutions; BN at identity; logits keep PyTorch's default."""
        if any(p.is_meta for p in self.parameters()):
            return  # built for its shapes only (profiles, converters' checks): there are no values to set
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.logits:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "last_layer", None)
                if last is not None:
                    last = last()
                    target = last.bn if isinstance(last, ConvBn) else last
                    nn.init.zeros_(target.weight)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, num_features, H/s, W/s), s the output stride (32 by default)."""
        if self.conv1 is not None:
            x = self.conv1(x)
            if self.pool1 is not None:
                x = self.pool1(x)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Each residual unit's activations are recomputed in the backward pass instead of kept (timm's
            # set_grad_checkpointing): less memory for more compute. BatchNorm's running statistics see the
            # recomputed forward too, as in timm.
            for units in self.blocks:
                for unit in units:
                    x = torch.utils.checkpoint.checkpoint(unit, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        if self.postnorm is not None:
            x = F.relu(self.postnorm(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> logits: (N, K) after a global pool, (N, K, h, w) when fully convolutional."""
        if self.global_pool:
            x = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        if pre_logits or self.logits is None:
            return x.flatten(1) if self.global_pool and self.spatial_squeeze else x
        if self.global_pool and self.spatial_squeeze:
            # Same arithmetic as the 1x1 conv, as a matmul: (N, C) @ (C, K).
            return F.linear(x.flatten(1), self.logits.weight.flatten(1), self.logits.bias)
        return self.logits(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.out_indices is not None:
            return self.forward_stages(x, self.out_indices)
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of stages `indices` (0 the root conv, before its pool; i block i), in order; the
        blocks after the last one wanted do not run. Block i gives (N, C_i, H/r_i, W/r_i), r_i its
        reduction in `feature_info`."""
        want = set(indices)
        outs = {}
        if self.conv1 is not None:
            x = self.conv1(x)
        if 0 in want:
            outs[0] = x
        if max(want) > 0:
            if self.pool1 is not None:
                x = self.pool1(x)
            for i, block in enumerate(self.blocks, start=1):
                x = block(x)
                if i in want:
                    outs[i] = x
                if i == max(want):
                    break
        return [outs[i] for i in indices]

    def forward_end_points(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like TF-slim: returns (net, end_points) keyed by slim's names ('<scope>/block1/unit_1/...')."""
        ep: dict[str, torch.Tensor] = {}
        s = self.scope
        if self.conv1 is not None:
            x = self.conv1(x)
            ep[f"{s}/conv1"] = x
            if self.pool1 is not None:
                x = self.pool1(x)
        for bname, block in self.blocks.named_children():
            for uname, unit in block.named_children():
                prefix = f"{s}/{bname}/{uname}/"
                if _accepts(unit.forward, "end_points"):
                    x = unit(x, end_points=ep, prefix=prefix)
                else:  # a user's unit that records no end points of its own
                    x = unit(x)
                    ep[prefix.rstrip("/")] = x
            ep[f"{s}/{bname}"] = x
        if self.postnorm is not None:
            x = F.relu(self.postnorm(x))
        if self.global_pool:
            x = x.mean((2, 3), keepdim=True)
            ep["global_pool"] = x
        if self.logits is not None:
            x = self.logits(F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x)
            ep[f"{s}/logits"] = x
            if self.spatial_squeeze and x.shape[-2:] == (1, 1):
                x = x.flatten(1)
                ep[f"{s}/spatial_squeeze"] = x
            ep["predictions"] = torch.softmax(x, dim=1)
        return x, ep

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual unit's activations in the backward pass (timm's name for it)."""
        self.grad_checkpointing = bool(enable)

    def reset_classifier(self, num_classes: int | None) -> None:
        """Replace the logits layer with a new one of `num_classes` outputs (None removes it), initialised as
        the builder does (PyTorch's default for the logits), on the old layer's device and dtype; `config`
        follows, so a weights file saved afterwards describes the new head."""
        old = self.logits.weight if self.logits is not None else next(self.parameters(), None)
        kw = {"device": old.device, "dtype": old.dtype} if old is not None else {}
        self.num_classes = num_classes
        self.logits = nn.Conv2d(self.num_features, num_classes, 1, **kw) if num_classes else None
        config = getattr(self, "config", None)
        if config is not None:
            self.config = type(config)(config.arch, {**config.kwargs, "num_classes": num_classes})

