"""The residual family after 2016 (issue 12): ResNet-C/D, ResNeXt, Wide ResNet, SE, stochastic depth, BiT.
Published sizes, the unit options' structure and behaviour, and atrous parity for the new shortcut."""

import pytest
import torch
from torch import nn

import resnetkit
from resnetkit.layers import StdConv2dSame, avg_pool2x2, drop_path
from resnetkit.models import ResNet, units
from resnetkit.models.profile import count_params
from resnetkit.models.variants import torchvision_blocks
from tests.conftest import randomize_bn

# timm 1.0.31's `timm.create_model(name)` parameter counts (1000 classes), equal to torchvision's where it
# has the net (resnext*, wide_resnet*); tests/test_convert_timm.py checks them against timm itself.
TIMM_PARAMS = {
    "resnet18d": 11_708_744, "resnet34d": 21_816_904, "resnet50c": 25_576_264, "resnet50d": 25_576_264,
    "resnet101d": 44_568_392, "resnet152d": 60_212_040,
    "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
    "seresnet50": 28_088_024, "seresnext50_32x4d": 27_559_896,
    "resnetv2_50x1_bit": 25_549_352, "resnetv2_101x1_bit": 44_541_480, "resnetv2_50x3_bit": 217_319_080,
    "resnetv2_50": 25_549_352, "resnetv2_101": 44_541_480,
}
# Zagoruyko and Komodakis 2016, table 1 / section 3: WRN-28-10 36.5M, WRN-16-8 11.0M.
WRN_PAPER_M = {"wrn28_10": 36.5, "wrn16_8": 11.0}


def meta_model(name, **kw):
    with torch.device("meta"):
        return resnetkit.create_model(name, **kw)


@pytest.mark.parametrize("name,count", TIMM_PARAMS.items())
def test_parameter_counts_equal_timm(name, count):
    assert count_params(meta_model(name)) == count


@pytest.mark.parametrize("name,millions", WRN_PAPER_M.items())
def test_wide_resnet_parameter_counts_match_paper(name, millions):
    assert round(count_params(meta_model(name)) / 1e6, 1) == millions


def unit_list(model):
    return [m for m in model.modules() if isinstance(m, units._Unit)]


def test_resnet_d_has_deep_root_and_avg_pool_shortcuts():
    m = meta_model("resnet50d")
    assert [c.conv.out_channels for c in m.conv1] == [32, 32, 64] and m.conv1[0].conv.stride == (2, 2)
    pooled = [u for u in unit_list(m) if u.shortcut_pool is not None]
    # blocks 2-4 stride in their first unit: the pool takes the stride, the projection is 1x1/1
    assert [u.stride for u in pooled] == [2, 2, 2] and all(u.shortcut.conv.stride == (1, 1) for u in pooled)
    c = meta_model("resnet50c")
    assert not any(u.shortcut_pool is not None for u in unit_list(c))
    assert count_params(c) == count_params(m)  # the pool has no parameters


@pytest.mark.parametrize("name,width,groups", [("resnext50_32x4d", 128, 32), ("resnext101_64x4d", 256, 64),
                                               ("wide_resnet50_2", 128, 1), ("resnet50", 64, 1)])
def test_grouped_and_wide_bottlenecks(name, width, groups):
    conv2 = meta_model(name).blocks.block1.unit_1.conv2.conv
    assert (conv2.out_channels, conv2.groups) == (width, groups)


def test_squeeze_excitation_reweights_channels():
    m = meta_model("seresnet50")
    se = m.blocks.block4.unit_1.se
    assert (se.fc1.in_channels, se.fc1.out_channels) == (2048, 128)  # 2048 / 16
    unit = randomize_bn(ResNet([torchvision_blocks(units.bottleneck_v1, (1,), True, width=8,
                                                   se_ratio=1 / 16)[0]], num_classes=None)).eval()
    _, ep = unit.forward_end_points(torch.randn(2, 3, 32, 32))
    before, after = ep["resnet/block1/unit_1/bottleneck_v1/conv3"], ep["resnet/block1/unit_1/bottleneck_v1/se"]
    gate = after / before  # (N, C, h, w): one sigmoid gate per sample and channel
    assert ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(gate, gate[:, :, :1, :1].expand_as(gate))


def test_bit_uses_group_norm_and_weight_standardisation_without_biases():
    m = meta_model("resnetv2_50x1_bit")
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c is not m.logits]
    assert convs and all(isinstance(c, StdConv2dSame) and c.bias is None for c in convs)
    assert not any(isinstance(n, nn.BatchNorm2d) for n in m.modules())
    assert isinstance(m.postnorm, nn.GroupNorm) and m.postnorm.num_groups == 32
    assert meta_model("resnetv2_50x3_bit").conv1.out_channels == 192


def test_weight_standardised_conv_ignores_filter_scale_and_shift():
    conv = StdConv2dSame(4, 6, 3, eps=1e-10)
    x = torch.randn(2, 4, 9, 9)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(6, 1, 1, 1) + 0.5).add_(torch.randn(6, 1, 1, 1))
    torch.testing.assert_close(conv(x), y, rtol=1e-4, atol=1e-4)


def test_drop_path_rates_are_linear_over_depth():
    m = meta_model("resnet50d", drop_path_rate=0.2)
    rates = [u.drop_path.rate if u.drop_path is not None else 0.0 for u in unit_list(m)]
    assert len(rates) == 16 and rates[0] == 0.0
    expected = torch.linspace(0, 0.2, 16, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), expected)
    assert all(u.drop_path is None for u in unit_list(meta_model("resnet50d")))
    with pytest.raises(resnetkit.UserError, match="plain unit"):
        meta_model("plain20", drop_path_rate=0.1)


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def test_drop_path_layer_scales_kept_samples_and_is_identity_in_eval():
    x = torch.ones(20_000, 2, 1, 1)
    y = drop_path(x, 0.3, training=True)
    per_sample = y.flatten(1)
    torch.testing.assert_close(per_sample.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert (per_sample[:, 0] == per_sample[:, 1]).all()  # a whole sample is kept or dropped
    assert abs(y.mean().item() - 1.0) < 0.03  # unbiased: E[y] = x
    assert drop_path(x, 0.3, training=False) is x


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet164", "resnet18d", "resnetv2_50x1_bit"])
def test_drop_path_drops_whole_residual_branches_of_every_unit_kind(name):
    """Per sample, a unit at rate 0.5 in training gives either its output with the branch x0 (dropped)
    or with the branch x2 (kept, rescaled); the shortcut is never touched. BN in eval mode keeps the
    three forwards comparable."""
    model = randomize_bn(resnetkit.create_model(name, num_classes=3, drop_path_rate=0.5)).eval()
    unit = unit_list(model)[-1]
    assert unit.drop_path.rate == 0.5
    x = torch.randn(16, unit.in_chans, 4, 4)
    real = unit.drop_path
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit(x))  # eval: nothing dropped
        unit.drop_path = Scale(0.0)
        dropped = unit(x)
        unit.drop_path = Scale(2.0)  # 1 / (1 - 0.5)
        kept = unit(x)
        unit.drop_path = real.train()
        out = unit(x)
    is_kept = [torch.allclose(out[i], kept[i]) for i in range(16)]
    is_dropped = [torch.allclose(out[i], dropped[i]) for i in range(16)]
    assert not torch.allclose(kept, dropped)
    assert all(a != b for a, b in zip(is_kept, is_dropped)) and 0 < sum(is_kept) < 16


def test_wide_resnet_dropout_sits_between_the_convs_and_only_trains():
    m = resnetkit.create_model("wrn16_8", dropout=0.3, num_classes=4)
    u = m.blocks.block2.unit_2
    assert u.dropout == 0.3 and isinstance(u.conv1.bn, nn.BatchNorm2d) and u.conv2.bias is None
    x = torch.randn(2, 3, 16, 16)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))


@pytest.mark.parametrize("size,rate", [(7, 1), (7, 2), (8, 2), (9, 3), (2, 3)])
def test_atrous_avg_pool_sampled_is_the_strided_pool(size, rate):
    """The 'D' shortcut's pool at stride 1 and rate r, sampled every 2r cells from the origin, equals the
    strided pool applied to the grid sampled every r cells (what the nominal net sees)."""
    x = torch.randn(2, 3, size, size + 1)
    dense = avg_pool2x2(x, stride=1, rate=rate)
    nominal = avg_pool2x2(x[:, :, ::rate, ::rate], stride=2)
    torch.testing.assert_close(dense[:, :, ::2 * rate, ::2 * rate], nominal)


def shortcut_d_blocks(kind):
    if kind == "basic":
        return torchvision_blocks(units.basic_v1, (1, 2, 1, 1), False, width=4)
    if kind == "preact":
        return torchvision_blocks(units.bottleneck_v2, (1, 2, 1, 1), True, width=2, cardinality=2, base_width=64)
    return torchvision_blocks(units.bottleneck_v1, (1, 2, 1, 1), True, width=2, cardinality=2, base_width=128)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "preact"])
@pytest.mark.parametrize("size", [17, 20])
def test_atrous_dense_output_subsampled_equals_nominal_with_avg_down(kind, size):
    """output_stride on 'D' shortcuts and grouped convs: the dense features sampled at the nominal grid
    are the nominal net's (as tests/test_models.py checks for the paper's units)."""
    preact = kind == "preact"
    x = torch.randn(2, 3, size * 4, size * 4)
    kw = dict(num_classes=None, global_pool=False, root="deep", root_pool="torch", shortcut="D", preact=preact,
              root_depth=8)
    ref = randomize_bn(ResNet(shortcut_d_blocks(kind), **kw)).eval()
    with torch.no_grad():
        expected = ref(x)  # stride 32
        for os_ in (8, 16):
            model = ResNet(shortcut_d_blocks(kind), output_stride=os_, **kw).eval()
            model.load_state_dict(ref.state_dict())
            out = model(x)
            f = 32 // os_
            torch.testing.assert_close(out[:, :, ::f, ::f], expected, atol=1e-4, rtol=1e-4)
