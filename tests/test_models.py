"""The model library: every registered variant, block specs, end points, output_stride."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import resnetkit
from resnetkit.models import (
    Block,
    ResNet,
    basic_v1_block,
    basic_v2_block,
    model_defaults,
    resnet_v1_block,
    resnet_v2_block,
    units,
)
from resnetkit.models.profile import count_params
from tests.conftest import randomize_bn

ALL = resnetkit.list_models(task="classification")
SEGMENTATION = resnetkit.list_models(task="segmentation")
# Too slow to backprop at every commit on 2 cores; their forward is still checked at a small size.
HEAVY = {"resnet1202", "preact_resnet1001", "resnet_v1_200", "resnet_v2_200", "resnet152", "resnet_v1_152",
         "resnet_v2_152", "resnet101d", "resnet152d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
         "wide_resnet101_2", "resnetv2_101", "resnetv2_101x1_bit", "resnetv2_50x3_bit", "wrn28_10"}


def test_every_backbone_has_every_segmentation_head():
    assert SEGMENTATION == sorted((f"{p}_{b}" for b in ALL for p in ("deeplabv3", "deeplabv3plus", "slimseg")),
                                  key=SEGMENTATION.index)
    assert len(SEGMENTATION) == 3 * len(ALL) and set(resnetkit.list_models()) == set(ALL) | set(SEGMENTATION)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_segmentation_model_gives_dense_logits(name):
    """On the meta device (no arithmetic): logits at the input size, features at 1/output_stride."""
    d = model_defaults(name)
    assert d["task"] == "segmentation" and d["num_classes"] == 21
    os_ = 4 if d["input_size"] < 224 else 8
    size = 33 if d["input_size"] < 224 else 65  # slim's aligned sizes: stride * k + 1
    with torch.device("meta"):
        model = resnetkit.create_model(name, num_classes=7, output_stride=os_).eval()
        out, ep = model.forward_end_points(torch.empty(2, 3, size, size))
    assert out.shape == (2, 7, size, size) and model.config.arch == name
    s = (4 if os_ == 8 else 2) if name.startswith("deeplabv3plus_") else os_  # the decoder: stride 4 (CIFAR 2)
    assert ep["head/logits"].shape == (2, 7, (size - 1) // s + 1, (size - 1) // s + 1)


@pytest.mark.parametrize("name", ["deeplabv3_resnet20", "slimseg_resnet_v2_50"])
def test_segmentation_models_train(name):
    model = resnetkit.create_model(name, num_classes=3, output_stride=4 if "20" in name else 16)
    x = torch.randn(2, 3, 33, 33)
    out = model(x)
    assert out.shape == (2, 3, 33, 33) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_model(name):
    d = model_defaults(name)
    size = 32 if d["input_size"] == 32 else 64
    model = resnetkit.create_model(name, num_classes=7)
    x = torch.randn(2, 3, size, size)
    if name in HEAVY:
        # Train-mode BN: at init, eval-mode stats (0, 1) let 300+ pre-activation units overflow.
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        return
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert torch.isfinite(torch.cat([g.flatten() for g in grads])).all()
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    torch.testing.assert_close(model.forward_head(feats), model(x))


# Published sizes: torchvision's exact counts; He et al. 2015 Table 6 and He et al. 2016 Table 3.
EXACT = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
         "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
         "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696}
PAPER_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
           "resnet1202": 19.4, "preact_resnet110": 1.7, "preact_resnet164": 1.7, "wrn28_10": 36.5, "wrn16_8": 11.0}


@pytest.mark.parametrize("name,count", EXACT.items())
def test_torchvision_parameter_counts(name, count):
    with torch.device("meta"):
        assert count_params(resnetkit.create_model(name)) == count


@pytest.mark.parametrize("name,millions", PAPER_M.items())
def test_paper_parameter_counts(name, millions):
    with torch.device("meta"):
        n = count_params(resnetkit.create_model(name))
    assert round(n / 1e6, 2 if millions < 1 else 1) == millions


def test_preact_resnet1001_conv_weights_match_paper():
    # The paper's 10.2M counts convolution and classifier weights; BN and the v2 biases add ~0.2M.
    with torch.device("meta"):
        m = resnetkit.create_model("preact_resnet1001")
    weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert round(weights / 1e6, 1) == 10.2


def test_plain_nets_have_same_layers_as_residual_but_no_shortcuts():
    plain, res = resnetkit.create_model("plain20"), resnetkit.create_model("resnet20")
    assert count_params(plain) == count_params(res)  # option A shortcuts have no parameters
    assert not any(u.has_shortcut for u in plain.modules() if isinstance(u, units._Unit))
    x = torch.randn(1, 3, 32, 32)
    plain.load_state_dict(res.state_dict())
    assert not torch.allclose(plain.eval()(x), res.eval()(x))


def tiny_blocks(version):
    make = resnet_v1_block if version == 1 else resnet_v2_block
    return [make("block1", 1, 2, 2), make("block2", 2, 2, 2), make("block3", 4, 2, 2), make("block4", 8, 2, 1)]


def test_end_point_names_of_a_tiny_net():
    model = ResNet(tiny_blocks(2), num_classes=5, preact=True, scope="resnet_v2_tiny").eval()
    _, ep = model.forward_end_points(torch.randn(1, 3, 32, 32))
    s = "resnet_v2_tiny"
    for name in [f"{s}/conv1", f"{s}/block1/unit_1/bottleneck_v2/shortcut",
                 f"{s}/block1/unit_1/bottleneck_v2/conv1", f"{s}/block1/unit_1/bottleneck_v2/conv2",
                 f"{s}/block1/unit_1/bottleneck_v2/conv3", f"{s}/block1/unit_1/bottleneck_v2",
                 f"{s}/block1", f"{s}/block4", "global_pool", f"{s}/logits", f"{s}/spatial_squeeze",
                 "predictions"]:
        assert name in ep, name
    # identity units record no shortcut end point (slim only collects the projection conv)
    assert f"{s}/block1/unit_2/bottleneck_v2/shortcut" not in ep
    assert ep["predictions"].shape == (1, 5)
    torch.testing.assert_close(ep["predictions"].sum(1), torch.ones(1))


def block_shapes(model, h, w=None):
    _, ep = model.forward_end_points(torch.randn(1, 3, h, w or h))
    return {k.split("/")[-1]: tuple(v.shape[2:]) for k, v in ep.items() if k.count("/") == 1
            and k.split("/")[-1].startswith("block")}


def test_end_point_shapes_classification_224():
    model = ResNet(tiny_blocks(1), num_classes=10).eval()
    assert block_shapes(model, 224) == {"block1": (28, 28), "block2": (14, 14), "block3": (7, 7),
                                        "block4": (7, 7)}


def test_end_point_shapes_fully_convolutional_321():
    model = ResNet(tiny_blocks(2), num_classes=10, global_pool=False, preact=True).eval()
    assert block_shapes(model, 321) == {"block1": (41, 41), "block2": (21, 21), "block3": (11, 11),
                                        "block4": (11, 11)}
    assert model(torch.randn(1, 3, 321, 321)).shape == (1, 10, 11, 11)


def test_end_point_shapes_rootless_128():
    model = ResNet(tiny_blocks(1), num_classes=None, include_root_block=False).eval()
    assert block_shapes(model, 128) == {"block1": (64, 64), "block2": (32, 32), "block3": (16, 16),
                                        "block4": (16, 16)}


def test_end_point_shapes_atrous_output_stride_8():
    model = ResNet(tiny_blocks(1), num_classes=None, global_pool=False, output_stride=8).eval()
    assert block_shapes(model, 224) == {"block1": (28, 28), "block2": (28, 28), "block3": (28, 28),
                                        "block4": (28, 28)}


def atrous_blocks(kind):
    if kind == "bottleneck_v1":
        return [resnet_v1_block(f"block{i + 1}", 2, 2, 2) for i in range(3)] + [resnet_v1_block("block4", 2, 2, 1)]
    if kind == "bottleneck_v2":
        return [resnet_v2_block(f"block{i + 1}", 2, 2, 2) for i in range(3)] + [resnet_v2_block("block4", 2, 2, 1)]
    make = basic_v1_block if kind == "basic_v1" else basic_v2_block
    # stride first (torchvision's placement) to exercise the dilation of the second 3x3
    return [make(f"block{i + 1}", 4, 2, 2, stride_first=True) for i in range(3)] + [make("block4", 4, 2, 1)]


@pytest.mark.parametrize("kind", ["bottleneck_v1", "bottleneck_v2", "basic_v1", "basic_v2"])
@pytest.mark.parametrize("size", [17, 20])
@pytest.mark.parametrize("root", [False, True])
def test_atrous_dense_output_subsampled_equals_nominal(kind, size, root):
    preact = kind.endswith("v2")
    nominal = 8 * (4 if root else 1)
    strides = [4, 8, 16, 32] if root else [1, 2, 4, 8]
    size = size * 4 if root else size
    x = torch.randn(2, 3, size, size)
    ref_model = randomize_bn(ResNet(atrous_blocks(kind), num_classes=None, global_pool=False,
                                    include_root_block=root, preact=preact)).eval()
    expected = ref_model(x)
    for os_ in strides:
        model = ResNet(atrous_blocks(kind), num_classes=None, global_pool=False, include_root_block=root,
                       preact=preact, output_stride=os_).eval()
        model.load_state_dict(ref_model.state_dict())
        with torch.no_grad():
            out = model(x)
        factor = nominal // os_
        torch.testing.assert_close(out[:, :, ::factor, ::factor], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("output_stride,match", [(6, "multiple of 4"), (64, "cannot be reached")])
def test_impossible_output_stride(output_stride, match):
    with pytest.raises(resnetkit.UserError, match=match):
        resnetkit.create_model("resnet_v2_50", output_stride=output_stride)
    with pytest.raises(ValueError, match=match):
        ResNet(tiny_blocks(2), output_stride=output_stride)


def test_unknown_model_suggests_close_names():
    with pytest.raises(resnetkit.UserError, match="did you mean resnet_v2_50"):
        resnetkit.create_model("resnet_v2_5")


def test_user_defined_unit_fn():
    class SE(nn.Module):  # a user's own unit: any callable with (in_chans, depth, stride, rate)
        def __init__(self, in_depth, depth, stride=1, rate=1):
            super().__init__()
            self.conv = nn.Conv2d(in_depth, depth, 3, stride, padding=rate, dilation=rate)
            self.out_channels = depth

        def forward(self, x):
            return torch.relu(self.conv(x))

    blocks = [Block("block1", SE, [dict(depth=8, stride=2), dict(depth=8, stride=1)]),
              Block("block2", units.basic_v1, [dict(depth=16, stride=2)])]
    model = ResNet(blocks, num_classes=3, root="cifar", root_depth=4)
    out, ep = model.forward_end_points(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    assert ep["resnet/block1/unit_1"].shape == (2, 8, 8, 8)
    assert ep["resnet/block2/unit_1/basic_v1"].shape == (2, 16, 4, 4)


@pytest.mark.parametrize("shortcut,extra", [("A", 0), ("B", 16 * 32 + 32 * 64 + 2 * (32 + 64)),
                                            ("C", None)])
def test_shortcut_options(shortcut, extra):
    base = count_params(resnetkit.create_model("resnet20"))
    n = count_params(resnetkit.create_model("resnet20", shortcut=shortcut))
    if extra is None:
        assert n > base + 16 * 32 + 32 * 64
    else:
        assert n == base + extra


def test_config_round_trip_and_zero_init_residual():
    m = resnetkit.create_model("resnet20", num_classes=4, zero_init_residual=True)
    assert m.config.arch == "resnet20" and m.config.kwargs == {"num_classes": 4, "zero_init_residual": True}
    again = resnetkit.ModelConfig.from_dict(m.config.to_dict()).build()
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in m.parameters())
    last_bns = [u.conv2.bn.weight for u in m.modules() if isinstance(u, units.Basic)]
    assert last_bns and all((w == 0).all() for w in last_bns)


def test_v2_root_has_bias_and_postnorm():
    m = resnetkit.create_model("resnet_v2_50")
    assert m.conv1.bias is not None and m.postnorm is not None
    assert resnetkit.create_model("resnet_v1_50").postnorm is None


@settings(max_examples=40, deadline=None)
@given(h=st.integers(9, 300), w=st.integers(9, 300), os_=st.sampled_from([None, 4, 8, 16, 32]),
       name=st.sampled_from(["resnet_v1_50", "resnet_v2_101", "resnet18"]))
def test_feature_size_is_ceil_of_input_over_output_stride(h, w, os_, name):
    # TF 'SAME' arithmetic: every stride-s layer maps n to ceil(n / s), so the whole net maps n to
    # ceil(n / output_stride). (torchvision's symmetric pool agrees: floor((n - 1) / 2) + 1 = ceil(n / 2).)
    with torch.device("meta"):
        model = resnetkit.create_model(name, num_classes=None, global_pool=False, output_stride=os_).eval()
        feats = model.forward_features(torch.empty(1, 3, h, w))
    s = os_ or 32
    assert feats.shape[-2:] == (math.ceil(h / s), math.ceil(w / s))
