"""Keras ResNetV2 weights -> our resnet_v2 layout, against Keras' own outputs on a tiny fixture made by
Keras (tests/fixtures/make_keras_fixtures.py): every stored layer output within 1e-4 relative."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.convert import detect_kind
from resnetkit.convert.common import ConversionError
from resnetkit.convert.keras import KERAS_BN_EPS, detect, from_keras, map_layers, read_keras_weights
from resnetkit.models import create_model

pytest.importorskip("h5py")

FIX = Path(__file__).parent / "fixtures" / "keras"
FILES = ["tiny_v2.weights.h5", "tiny_v2_legacy.h5"]
META = json.loads((FIX / "tiny_v2.json").read_text())
DATA = np.load(FIX / "tiny_v2.npz")


def keras_end_point(layer: str) -> str | None:
    """Keras layer name -> our end point name (scope 'resnet_v2'); None where we record none."""
    if layer == "conv1_conv":
        return "resnet_v2/conv1"
    if layer.endswith("_out"):
        stack, block = layer.split("_")[:2]  # 'conv3', 'block2'
        return f"resnet_v2/block{int(stack[4:]) - 1}/unit_{block[5:]}/bottleneck_v2"
    return {"avg_pool": "global_pool"}.get(layer)


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def close(got, ref, name):
    ref = ref.reshape(got.shape) if ref.size == got.size else ref
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())), err_msg=name)


@pytest.mark.parametrize("fname", FILES)
@pytest.mark.parametrize("size", ["", "32"])
def test_outputs_equal_keras(fname, size):
    model = from_keras(FIX / fname).eval()
    x = torch.from_numpy(nchw(DATA[f"input{size}"]))
    with torch.no_grad():
        net, ep = model.forward_end_points(x)
        pooled = model.pool1(ep["resnet_v2/conv1"])
        post = model.forward_features(x)
    checked = 0
    for layer in META["outputs"]:
        ref = nchw(DATA[f"out{size}/{layer}"])
        if layer == "pool1_pool":
            got = pooled
        elif layer == "post_relu":
            got = post
        else:
            got = ep[keras_end_point(layer)]
        close(got.numpy(), ref, layer)
        checked += 1
    assert checked == len(META["outputs"]) == 10
    if not size:
        close(net.numpy(), DATA["logits"], "logits")
        close(torch.softmax(net, 1).numpy(), DATA["predictions"], "predictions")


def test_keras_root_pool_and_eps_are_what_make_it_match():
    """Slim's 'SAME' root pool (-inf padding) gives other numbers on the fixture: the test can tell."""
    model = from_keras(FIX / FILES[0]).eval()
    assert all(m.eps == KERAS_BN_EPS for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    slim_pooled = from_keras(FIX / FILES[0], root_pool="same").eval()
    x = torch.from_numpy(nchw(DATA["input"]))
    with torch.no_grad():
        a, b = model(x).numpy(), slim_pooled(x).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_both_layouts_read_the_same_variables():
    k3, k2 = (read_keras_weights(FIX / f) for f in FILES)
    assert k3.keys() == k2.keys() and len(k3) == 42  # 19 BN, 22 conv, 1 dense
    for layer in k3:
        assert k3[layer].keys() == k2[layer].keys(), layer
        for leaf in k3[layer]:
            np.testing.assert_array_equal(k3[layer][leaf], k2[layer][leaf])


def test_tiny_body_read_off_the_file():
    info = detect(read_keras_weights(FIX / FILES[0]))
    assert info["stages"] == (2, 2, 2) and info["arch"] is None and info["num_classes"] == 7
    model = from_keras(FIX / FILES[0])
    # conv4_block1 projects although 16 -> 16 (Keras projects every stack's first block): shortcut 'C'
    assert model.blocks.block3.unit_1.projects and not model.blocks.block3.unit_2.projects
    assert [u.stride for b in model.blocks for u in b] == [1, 2, 1, 2, 1, 1]


def fake_resnet_v2_layers(stages, classes=1000):
    """The layer names and variable shapes of keras.applications.ResNet{50,101,152}V2 (zero-copy zeros)."""
    z = lambda *shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731
    bn = lambda c: {k: z(c) for k in ("gamma", "beta", "moving_mean", "moving_variance")}  # noqa: E731
    layers = {"conv1_conv": {"kernel": z(7, 7, 3, 64), "bias": z(64)}}
    cin = 64
    for s, (n, f) in enumerate(zip(stages, (64, 128, 256, 512))):
        for u in range(1, n + 1):
            p = f"conv{s + 2}_block{u}_"
            layers[p + "preact_bn"] = bn(cin)
            if u == 1:
                layers[p + "0_conv"] = {"kernel": z(1, 1, cin, 4 * f), "bias": z(4 * f)}
            layers[p + "1_conv"] = {"kernel": z(1, 1, cin, f)}
            layers[p + "1_bn"] = bn(f)
            layers[p + "2_conv"] = {"kernel": z(3, 3, f, f)}
            layers[p + "2_bn"] = bn(f)
            layers[p + "3_conv"] = {"kernel": z(1, 1, f, 4 * f), "bias": z(4 * f)}
            cin = 4 * f
    layers["post_bn"] = bn(cin)
    if classes:
        layers["predictions"] = {"kernel": z(cin, classes), "bias": z(classes)}
    return layers


@pytest.mark.parametrize("depth,stages", [(50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))])
def test_published_layouts_map_onto_registered_nets(depth, stages):
    layers = fake_resnet_v2_layers(stages)
    info = detect(layers)
    assert info["arch"] == f"resnet_v2_{depth}" and info["num_classes"] == 1000
    target = create_model(info["arch"], num_classes=1000, root_pool="keras", bn_eps=KERAS_BN_EPS).state_dict()
    mapped = map_layers(layers)
    expected = {k: tuple(v.shape) for k, v in target.items() if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected


def test_notop_has_no_logits():
    info = detect(fake_resnet_v2_layers((3, 4, 6, 3), classes=0))
    assert info["num_classes"] is None and info["arch"] == "resnet_v2_50"


def test_registered_model_keeps_keras_options_in_its_config(tmp_path):
    # Smallest registered-arch round trip: a tiny file forced into resnet_v2_50 must fail loudly...
    with pytest.raises(ConversionError, match="missing in Keras weights: .*blocks.block1.unit_3"):
        from_keras(FIX / FILES[0], arch="resnet_v2_50")
    # ...and the options a Keras conversion builds with are part of the registered model's config.
    m = create_model("resnet_v2_50", num_classes=None, root_pool="keras", bn_eps=KERAS_BN_EPS)
    assert m.config.kwargs["root_pool"] == "keras" and type(m.pool1).__name__ == "ZeroPadMaxPool"


def test_keras3_archive(tmp_path):
    archive = tmp_path / "tiny.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(FIX / FILES[0], "model.weights.h5")
        z.writestr("config.json", "{}")
    assert detect_kind(archive) == "keras"
    torch.testing.assert_close(from_keras(archive).state_dict(), from_keras(FIX / FILES[0]).state_dict())


def test_bad_files(tmp_path):
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes((FIX / FILES[1]).read_bytes()[:5000])
    with pytest.raises(ConversionError, match="not a readable Keras HDF5"):
        from_keras(trunc)
    with pytest.raises(FileNotFoundError, match="no such file"):
        from_keras(tmp_path / "missing.h5")
    v1 = fake_resnet_v2_layers((3, 4, 6, 3))
    v1["conv1_bn"] = v1.pop("post_bn")
    with pytest.raises(ConversionError, match=r"ResNet50/101/152 \(v1\)"):
        detect(v1)
    extra = dict(fake_resnet_v2_layers((1, 1)), dense_1={"kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="unknown Keras layer 'dense_1'"):
        map_layers(extra)
    with pytest.raises(ConversionError, match="not a Keras ResNetV2"):
        detect({"block1_conv1": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}})

