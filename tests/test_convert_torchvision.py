"""torchvision's ResNets, state dict mapped in, give torchvision's outputs."""

import pytest
import torch
import torchvision

from resnetkit.convert.common import ConversionError
from resnetkit.convert.torchvision import detect_arch, from_torchvision
from tests.conftest import randomize_bn


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
@pytest.mark.parametrize("size", [(64, 64), (67, 61)])
def test_outputs_equal_torchvision(name, size):
    tv = randomize_bn(getattr(torchvision.models, name)(num_classes=11)).eval()
    ours = from_torchvision(tv.state_dict()).eval()
    assert ours.config.arch == name
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref, got = tv(x), ours(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_pth_file_round_trip(tmp_path):
    tv = randomize_bn(torchvision.models.resnet18()).eval()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    ours = from_torchvision(path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                                  "wide_resnet50_2", "wide_resnet101_2"])
def test_detect_arch_reads_width_and_groups(name):
    with torch.device("meta"):
        assert detect_arch(getattr(torchvision.models, name)().state_dict()) == name


def test_detect_arch_and_errors(tmp_path):
    sd = torchvision.models.resnet101().state_dict()
    assert detect_arch(sd) == "resnet101"
    bad = dict(sd)
    bad["layer1.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="unknown torchvision key 'layer1.0.extra.weight'"):
        from_torchvision(bad)
    with pytest.raises(ConversionError, match="missing in torchvision"):
        from_torchvision({k: v for k, v in sd.items() if "layer4.2" not in k}, arch="resnet101")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a readable torchvision checkpoint"):
        from_torchvision(junk)
