"""Keras ResNet50V2 / 101V2 / 152V2 weights (HDF5) -> resnetkit `resnet_v2_*` with Keras' numerics.

Keras' ResNetV2 (keras/src/applications/resnet.py: `ResNet(preact=True, use_bias=True)` over
`stack_residual_blocks_v2`) is slim's resnet_v2 in another naming, with three differences that matter:

* the root pool is ZeroPadding2D(1) + a 'VALID' 3x3/2 max pool, so a zero can win the max where slim's
  'SAME' pool pads with -inf: our `root_pool='keras'`;
* every BatchNormalization has epsilon 1.001e-5 (slim: 1e-5): our `bn_eps=1.001e-5`;
* the first block of every stack projects its shortcut (`_0_conv`) even when the depth does not change
  (slim projects only when it does). The published nets never hit this case; a custom body that does gets
  `shortcut='C'` for that unit.

The rest agrees with slim: the stride sits in the 3x3 of the LAST block of each stack but the last
(`stack_residual_blocks_v2(stride1=2)`, `conv5` has stride1=1), the 3x3 is ZeroPadding2D(1) + 'VALID'
(= slim's `conv2d_same`), a strided identity shortcut is MaxPooling2D(1, stride) of the raw input
(= slim's subsample), the projection reads the pre-activation and has a bias, and so does `_3_conv`.
Keras' `predictions` layer is Dense + softmax; our logits are the Dense part (apply softmax yourself).

Two file layouts are read with h5py:
* Keras 2 / tf-keras `save_weights('x.h5')` (the published `resnet50v2_weights_tf_dim_ordering_tf_kernels.h5`):
  root attr `layer_names`; group `<layer>` with attr `weight_names` (`conv1_conv/kernel:0`, ...); a full
  `model.save('x.h5')` file keeps the same under `model_weights`.
* Keras 3 `save_weights('x.weights.h5')`: `layers/<auto key>/vars/<i>`, the layer's name in the `vars`
  group's `name` attribute, variables in creation order (Conv2D/Dense: kernel, bias; BN: gamma, beta,
  moving_mean, moving_variance). A `.keras` archive (zip holding `model.weights.h5`) works too.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from torch import nn

from resnetkit._helpers import expansion_limit
from resnetkit.convert.common import BN, ConversionError, load_mapped_state_dict
from resnetkit.errors import DependencyError, MissingFileError
from resnetkit.models import Block, ResNet, bottleneck_v2, create_model
from resnetkit.models.variants import SLIM_DEPTHS

KERAS_BN_EPS = 1.001e-5
KERAS_MODEL_KWARGS = {"root_pool": "keras", "bn_eps": KERAS_BN_EPS}  # what a converted model is built with
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
UNIT_RE = re.compile(r"^conv(\d+)_block(\d+)_(preact_bn|0_conv|1_conv|1_bn|2_conv|2_bn|3_conv)$")
# Keras unit layer -> our module path inside `blocks.blockN.unit_M.` (v2 units).
UNIT_PARTS = {"preact_bn": "preact_bn", "0_conv": "shortcut", "1_conv": "conv1.conv", "1_bn": "conv1.bn",
              "2_conv": "conv2.conv", "2_bn": "conv2.bn", "3_conv": "conv3"}
ROOT_PARTS = {"conv1_conv": "conv1", "post_bn": "postnorm", "predictions": "logits"}

Layers = dict[str, dict[str, np.ndarray]]  # layer name -> {variable name: array}, in file order


# ------------------------------------------------------------------------------------------- reading
class _Budget:
    """Bytes a file may still decode to: HDF5 chunks and zip members can be tiny on disk and huge in memory."""

    def __init__(self, path: Path, limit: int):
        self.path, self.left = path, limit

    def take(self, n: int, what: str) -> None:
        if n > self.left:
            raise ConversionError(f"{self.path}: refused: {what} would decode to {n:,} more bytes, past the limit "
                                  "(4x the file size plus 64 MiB; pass max_bytes= for a larger file)")
        self.left -= n


def _array(ds, budget: _Budget) -> np.ndarray:
    budget.take(4 * int(np.prod(ds.shape, dtype=np.int64)), f"dataset {ds.name}")  # read as float32
    return np.asarray(ds, dtype=np.float32)


def _open_h5(path: Path, budget: _Budget):
    try:
        import h5py  # optional dependency
    except ImportError:
        raise DependencyError("reading Keras weights needs h5py: pip install 'resnetkit[keras]'") from None

    if zipfile.is_zipfile(path):  # a Keras 3 `.keras` archive
        with zipfile.ZipFile(path) as z:
            if "model.weights.h5" not in z.namelist():
                raise ConversionError(f"{path}: a zip file without model.weights.h5; not a .keras archive")
            budget.take(z.getinfo("model.weights.h5").file_size, "model.weights.h5")
            return h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    return h5py.File(path, "r")


def _leaf(weight_name: str) -> str:
    return weight_name.split("/")[-1].split(":")[0]  # 'conv1_conv/kernel:0' -> 'kernel'


def _read_legacy(f, budget: _Budget) -> Layers:
    out: Layers = {}
    for raw in f.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        g = f[name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
        if names:
            out[name] = {_leaf(n): _array(g[n], budget) for n in names}
    return out


def _read_keras3(f, budget: _Budget) -> Layers:
    out: Layers = {}
    for key, g in f["layers"].items():
        v = g.get("vars")
        if v is None or not len(v):
            continue
        name = v.attrs.get("name")
        if name is None:
            raise ConversionError(f"Keras 3 weights group layers/{key} does not record its layer name (an older "
                                  "Keras 3 wrote it); re-save the model with a current Keras or as legacy .h5")
        name = name.decode() if isinstance(name, bytes) else str(name)
        arrays = [_array(v[str(i)], budget) for i in range(len(v))]
        leaves = BN_VARS if name.endswith("_bn") else ("kernel", "bias")
        if len(arrays) > len(leaves):
            raise ConversionError(f"Keras layer {name!r} has {len(arrays)} variables, expected at most {len(leaves)}")
        out[name] = dict(zip(leaves, arrays))
    return out


def read_keras_weights(path: str | os.PathLike, max_bytes: int | None = None) -> Layers:
    """Every layer's variables from a Keras HDF5 weights file (legacy Keras 2 or Keras 3 layout). The
    arrays may add up to `max_bytes` at most (default: 4x the file size plus 64 MiB)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    budget = _Budget(path, expansion_limit(path, max_bytes))
    try:
        with _open_h5(path, budget) as f:
            if "model_weights" in f:  # a whole model saved with model.save('x.h5')
                return _read_legacy(f["model_weights"], budget)
            if "layer_names" in f.attrs:
                return _read_legacy(f, budget)
            if "layers" in f:
                return _read_keras3(f, budget)
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:  # truncated, corrupt, not HDF5
        raise ConversionError(f"{path}: not a readable Keras HDF5 weights file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    raise ConversionError(f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, no 'layers' group)")


# ------------------------------------------------------------------------------------------- mapping
def detect(layers: Layers) -> dict:
    """{version, stages: [units per stack], arch, num_classes, root_depth, in_chans} from layer names."""
    names = set(layers)
    if "conv1_bn" in names or any(n.endswith("_3_bn") for n in names):
        raise ConversionError("this is Keras' ResNet50/101/152 (v1): it strides the first 1x1 conv and biases every "
                              "conv, which no resnetkit layout reproduces; only ResNet50V2/101V2/152V2 convert")
    if "conv1_conv" not in names or not any(n.endswith("_preact_bn") for n in names):
        raise ConversionError(f"not a Keras ResNetV2 (no conv1_conv / *_preact_bn layers; found "
                              f"{', '.join(sorted(names)[:5])}{' ...' if len(names) > 5 else ''})")
    units: dict[int, int] = {}
    for n in names:
        if m := UNIT_RE.match(n):
            s, u = int(m.group(1)), int(m.group(2))
            units[s] = max(units.get(s, 0), u)
    stacks = sorted(units)
    if stacks != list(range(2, 2 + len(stacks))):
        raise ConversionError(f"Keras stacks must be conv2, conv3, ... without gaps; found conv{stacks}")
    stages = tuple(units[s] for s in stacks)
    depth = next((d for d, ls in SLIM_DEPTHS.items() if ls == stages), None)
    kernel = layers["conv1_conv"]["kernel"]  # (7, 7, in, root_depth)
    pred = layers.get("predictions")
    return dict(version=2, stages=stages, depth=depth, arch=f"resnet_v2_{depth}" if depth else None,
                num_classes=None if pred is None else int(pred["kernel"].shape[-1]),
                in_chans=int(kernel.shape[2]), root_depth=int(kernel.shape[3]))


def _target(layer: str) -> str:
    if layer in ROOT_PARTS:
        return ROOT_PARTS[layer]
    if m := UNIT_RE.match(layer):
        return f"blocks.block{int(m.group(1)) - 1}.unit_{m.group(2)}.{UNIT_PARTS[m.group(3)]}"
    raise ConversionError(f"unknown Keras layer {layer!r}: not part of a Keras ResNetV2")


def map_layers(layers: Layers) -> dict[str, np.ndarray]:
    """Keras layers -> our state dict names and layouts (conv HWIO -> OIHW, Dense (C, K) -> (K, C, 1, 1))."""
    out = {}
    for layer, variables in layers.items():
        prefix = _target(layer)
        for leaf, value in variables.items():
            if leaf == "kernel":
                if value.ndim == 2:
                    value = value.T[:, :, None, None]  # Dense (in, out) -> 1x1 conv (out, in, 1, 1)
                else:
                    value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
                out[f"{prefix}.weight"] = value
            elif leaf == "bias":
                out[f"{prefix}.bias"] = value
            elif leaf in BN:
                out[f"{prefix}.{BN[leaf]}"] = value
            else:
                raise ConversionError(f"unknown variable {leaf!r} in Keras layer {layer!r}")
    return out


def keras_blocks(layers: Layers) -> list[Block]:
    """Block specs for any Keras ResNetV2 body, read off the weights: units per stack, depths from kernel
    shapes, Keras' strides (2 in the last unit of every stack but the last), and a projection ('C')
    wherever the file has a `_0_conv`."""
    info = detect(layers)
    blocks = []
    for i, n in enumerate(info["stages"]):
        last_stage = i == len(info["stages"]) - 1
        args = []
        for u in range(1, n + 1):
            p = f"conv{i + 2}_block{u}_"
            try:
                bottleneck = int(layers[p + "1_conv"]["kernel"].shape[-1])
                depth = int(layers[p + "3_conv"]["kernel"].shape[-1])
            except KeyError as e:
                raise ConversionError(f"Keras unit {p[:-1]} lacks layer {e.args[0]}") from None
            args.append(dict(depth=depth, depth_bottleneck=bottleneck, stride=2 if u == n and not last_stage else 1,
                             shortcut="C" if p + "0_conv" in layers else "B"))
        blocks.append(Block(f"block{i + 1}", bottleneck_v2, args))
    return blocks


def from_keras(src: str | os.PathLike | dict, arch: str | None = None, **kwargs) -> nn.Module:
    """Read Keras ResNetV2 weights (a `.h5` / `.weights.h5` / `.keras` path, or a read_keras_weights dict).

    With the units of ResNet50V2/101V2/152V2 (or `arch` given) the result is the registered
    `resnet_v2_*` built with Keras' root pool and BN epsilon, so it saves and reloads like any model.
    Any other body is built from the file as a bare `ResNet` (no registry name: use it from Python).
    Extra kwargs go to `create_model` / `ResNet`.
    """
    layers = src if isinstance(src, dict) else read_keras_weights(src)
    info = detect(layers)
    kwargs.setdefault("num_classes", info["num_classes"])
    for k, v in KERAS_MODEL_KWARGS.items():
        kwargs.setdefault(k, v)
    arch = arch or info["arch"]
    if arch is not None:
        model = create_model(arch, **kwargs)
    else:
        kwargs.setdefault("scope", "resnet_v2")
        model = ResNet(keras_blocks(layers), preact=True, in_chans=info["in_chans"], root_depth=info["root_depth"],
                       **kwargs)
    return load_mapped_state_dict(model, map_layers(layers), source="Keras weights")
