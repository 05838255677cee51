"""Our slim-layout nets against TF-slim's own outputs, on fixtures made by TF-slim
(tests/fixtures/make_tf_slim_fixtures.py): every end point within 1e-4 relative."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.convert.common import ConversionError
from resnetkit.convert.tf_slim import detect, load_slim_variables, map_variable
from resnetkit.models import ResNet, resnet_v1_block, resnet_v2_block

FIX = Path(__file__).parent / "fixtures" / "tf_slim"
CASES = sorted(p.stem for p in FIX.glob("*.json") if not p.stem.startswith("reader"))


def build(meta):
    make = resnet_v1_block if meta["version"] == "v1" else resnet_v2_block
    blocks = [make(b["scope"], b["base_depth"], b["num_units"], b["stride"]) for b in meta["blocks"]]
    return ResNet(blocks, num_classes=meta["num_classes"], global_pool=meta["global_pool"],
                  output_stride=meta["output_stride"], spatial_squeeze=meta["spatial_squeeze"],
                  preact=meta["version"] == "v2", scope=meta["scope"], root_pool="same").eval()


def load_case(name):
    meta = json.loads((FIX / f"{name}.json").read_text())
    data = np.load(FIX / f"{name}.npz")
    variables = {k[4:]: data[k] for k in data.files if k.startswith("var/")}
    return meta, data, variables


def nchw(a):
    return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


def assert_matches_slim(model, data):
    x = torch.from_numpy(nchw(data["input"]).copy())
    with torch.no_grad():
        net, ep = model.forward_end_points(x)
    slim_eps = [k[3:] for k in data.files if k.startswith("ep/")]
    assert slim_eps
    for name in slim_eps:
        assert name in ep, f"missing end point {name}"
        ref = nchw(data[f"ep/{name}"])
        got = ep[name].numpy().reshape(ref.shape)
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=1e-4, err_msg=name)
    ref = nchw(data["net"])
    np.testing.assert_allclose(net.numpy().reshape(ref.shape), ref, atol=1e-4 * max(1, np.abs(ref).max()), rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_end_points_equal_tf_slim(case):
    meta, data, variables = load_case(case)
    model = load_slim_variables(build(meta), variables)
    assert_matches_slim(model, data)


@pytest.mark.parametrize("case", ["v1_cls_gp_odd33", "v2_cls_gp_even32"])
@pytest.mark.parametrize("fmt", ["v2fmt.ckpt", "v1fmt.ckpt"])
def test_from_real_checkpoint_files(case, fmt):
    from resnetkit.convert.tf_checkpoint import read_checkpoint

    meta, data, _ = load_case(case)
    variables = read_checkpoint(FIX / f"{case}_{fmt}")
    model = load_slim_variables(build(meta), variables)
    assert_matches_slim(model, data)


def test_detect_reads_variant_and_classes():
    _, _, variables = load_case("v2_cls_gp_even32")
    info = detect(variables)
    assert info["scope"] == "resnet_v2" and info["version"] == 2 and info["num_classes"] == 1001
    assert info["layers"] == (2, 2, 2) and info["arch"] is None  # a tiny body: no registered depth


def test_drop_background_removes_class_zero():
    meta, data, variables = load_case("v1_cls_gp_odd33")
    meta = dict(meta, num_classes=1000)
    model = load_slim_variables(build(meta), variables, drop_background=True)
    x = torch.from_numpy(nchw(data["input"]).copy())
    ref = data["ep/resnet_v1/logits"].reshape(2, -1)[:, 1:]
    with torch.no_grad():
        np.testing.assert_allclose(model(x).reshape(2, -1).numpy(), ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4)


def test_wrong_architecture_names_the_keys():
    meta, _, variables = load_case("v2_cls_gp_even32")
    v1_meta = dict(meta, version="v1")
    with pytest.raises(ConversionError, match="missing in TF-slim checkpoint: .*conv1.bn"):
        load_slim_variables(build(v1_meta), variables)
    with pytest.raises(ConversionError, match="shape mismatch"):
        load_slim_variables(build(dict(meta, num_classes=10)), variables)


def test_map_variable_names():
    has_bn = {"blocks.block1.unit_1.conv1"}
    assert map_variable("r/block1/unit_1/bottleneck_v2/conv1/BatchNorm/gamma", "r", has_bn) == \
        "blocks.block1.unit_1.conv1.bn.weight"
    assert map_variable("r/block1/unit_1/bottleneck_v2/conv1/weights", "r", has_bn) == \
        "blocks.block1.unit_1.conv1.conv.weight"
    assert map_variable("r/block1/unit_1/bottleneck_v2/preact/moving_variance", "r", has_bn) == \
        "blocks.block1.unit_1.preact_bn.running_var"
    assert map_variable("r/postnorm/beta", "r", has_bn) == "postnorm.bias"
    assert map_variable("r/logits/biases", "r", has_bn) == "logits.bias"
