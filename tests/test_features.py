"""Multi-scale features (`features_only=True`): what `feature_info` promises is what the forward returns,
for every registered classification model, with and without output_stride."""

import math

import pytest
import torch

import resnetkit
from resnetkit.models import model_defaults
from tests.conftest import randomize_bn

ALL = resnetkit.list_models(task="classification")
SIZE = 37  # odd, so a wrong 'SAME' or ceil-mode rounding shows up as a size off by one


def is_cifar(name):
    return model_defaults(name)["input_size"] < 224


@pytest.mark.parametrize("dense", [False, True], ids=["nominal", "output_stride"])
@pytest.mark.parametrize("name", ALL)
def test_feature_info_matches_the_forward(name, dense):
    """On the meta device (shapes only): every block's output, (N, num_chs, ceil(H / reduction), ...),
    with the reductions capped at output_stride (8 for ImageNet nets, 2 for CIFAR's three stages). TF-slim's
    layout strides in the LAST unit of blocks 1-3, so its blocks end at 8, 16, 32, 32."""
    cifar = is_cifar(name)
    stages = 3 if cifar else 4
    os_ = (2 if cifar else 8) if dense else None
    with torch.device("meta"), torch.no_grad():
        model = resnetkit.create_model(name, features_only=True, out_indices=tuple(range(1, stages + 1)),
                                       output_stride=os_).eval()  # eval: meta BN in training mode is slow
        feats = model(torch.empty(2, 3, SIZE, SIZE))
    info = model.feature_info
    assert isinstance(feats, list) and len(feats) == len(info) == stages
    slim = model_defaults(name)["family"] == "tf-slim"
    nominal = [1, 2, 4] if cifar else [8, 16, 32, 32] if slim else [4, 8, 16, 32]
    assert info.reductions() == [min(r, os_ or r) for r in nominal]
    assert info.end_points() == [f"{name}/block{i}" for i in range(1, stages + 1)]
    for f, d in zip(feats, info):
        side = math.ceil(SIZE / d["reduction"])
        assert tuple(f.shape) == (2, d["num_chs"], side, side), d
    assert model.logits is None and model.postnorm is None and model.num_features == info.channels()[-1]


@pytest.mark.parametrize("name", ["resnet18d", "resnet20"])
def test_features_are_the_classifiers_end_points(name):
    """Same weights: the features are the classification model's block end points (and the root conv's
    at index 0); a features model loads a classifier's state dict minus its head."""
    cls = randomize_bn(resnetkit.create_model(name, num_classes=5)).eval()
    idx = (0, 2, 3)
    feat = resnetkit.create_model(name, features_only=True, out_indices=idx).eval()
    missing, unexpected = feat.load_state_dict(cls.state_dict(), strict=False)
    assert not missing and all(k.startswith(("logits.", "postnorm.", "blocks.block4.")) for k in unexpected)
    x = torch.randn(2, 3, 35, 35)
    with torch.no_grad():
        _, ep = cls.forward_end_points(x)
        feats = feat(x)
    assert [d["end_point"] for d in feat.feature_info] == [f"{name}/conv1", f"{name}/block2", f"{name}/block3"]
    for f, d in zip(feats, feat.feature_info):
        torch.testing.assert_close(f, ep[d["end_point"]])
    # blocks after the last wanted one are gone (no unused parameters under DDP)
    assert [n for n, _ in feat.blocks.named_children()] == ["block1", "block2", "block3"]


def test_default_out_indices_are_every_block():
    with torch.device("meta"):
        assert len(resnetkit.create_model("resnet50", features_only=True).feature_info) == 4
        assert resnetkit.create_model("resnet20", features_only=True).feature_info.channels() == [16, 32, 64]
        full = resnetkit.create_model("resnet50")
    # a classifier lists the root and every block, timm's numbering
    assert full.feature_info.reductions() == [2, 4, 8, 16, 32] and full.feature_info.channels()[-1] == 2048


@pytest.mark.parametrize("name,kw,match", [
    ("resnet20", dict(out_indices=(1, 2, 3, 4)), r"out_indices \(1, 2, 3, 4\): \[4\] out of range"),
    ("resnet50", dict(out_indices=(5,)), "out_indices"),
    ("resnet50", dict(out_indices=(-1,)), "out_indices"),
    ("resnet50", dict(out_indices=(3, 2)), "out_indices .* increasing"),
    ("resnet50", dict(out_indices=()), "out_indices is empty"),
    ("resnet20", dict(output_stride=8), "output_stride 8 cannot be reached"),
    ("resnet50d", dict(output_stride=6), "output_stride must be a multiple of 4"),
])
def test_bad_features_options_name_the_parameter(name, kw, match):
    with pytest.raises(resnetkit.ConfigError, match=match), torch.device("meta"):
        resnetkit.create_model(name, features_only=True, **kw)


def test_out_indices_need_features_only():
    with pytest.raises(resnetkit.ConfigError, match="out_indices .* features_only"):
        resnetkit.create_model("resnet18", out_indices=(1, 2))
