"""DeepLabv3+ (`deeplabv3plus_<backbone>`): the ASPP head plus the decoder on the stride-4 features."""

import json

import pytest
import torch

import resnetkit
from resnetkit.cli import main
from resnetkit.errors import ConfigError
from resnetkit.models import segmentation_name
from resnetkit.weights import load, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")
DECODER = ("decoder/aspp", "decoder/aspp_upsampled", "decoder/low_level", "decoder/fused")


def plus(backbone: str, output_stride: int, **kw) -> torch.nn.Module:
    return resnetkit.create_model(segmentation_name("deeplabv3plus", backbone), num_classes=3,
                                  output_stride=output_stride, aspp_channels=8, **kw)


@pytest.mark.parametrize("backbone,output_stride,low,stride", [
    ("resnet18", 16, "resnet18/block1", 4),  # basic units, torchvision layout: block1 sits at stride 4
    ("resnet18", 8, "resnet18/block1", 4),
    ("resnet_v1_50", 16, "resnet_v1_50/block1/unit_2/bottleneck_v1", 4),  # slim strides in block1's last unit
    ("resnet20", 4, "resnet20/block2", 2),  # CIFAR at output stride 4: refined by 2, as the paper at 8
    ("resnet18", 4, "resnet18/conv1", 2),
])
@pytest.mark.parametrize("size", [33, 38])
def test_logits_at_input_size_and_decoder_on_the_fine_grid(backbone, output_stride, low, stride, size):
    model = plus(backbone, output_stride).eval()
    assert model.low_level["end_point"] == low and model.logits_stride == stride
    x = torch.randn(2, 3, size, size + 3)  # odd and even sides in one input
    with torch.no_grad():
        out, ep = model.forward_end_points(x)
        ref = model(x)
    fine = ((size - 1) // stride + 1, (size + 2) // stride + 1)
    coarse = ((size - 1) // output_stride + 1, (size + 2) // output_stride + 1)
    assert out.shape == (2, 3, size, size + 3) and torch.equal(out, ref) and torch.equal(ep["logits"], out)
    assert ep["head/logits"].shape[-2:] == fine and ep["decoder/aspp"].shape[-2:] == coarse
    assert ep["decoder/low_level"].shape[1] == 48 and ep["decoder/fused"].shape[1:] == (8, *fine)
    assert ep["decoder/aspp_upsampled"].shape[-2:] == fine and ep[low].shape[-2:] == fine


def test_low_level_stride_picks_another_stage():
    model = plus("resnet20", 4, low_level_stride=1).eval()
    assert model.low_level["end_point"] == "resnet20/block1" and model.logits_stride == 1
    with torch.no_grad():
        _, ep = model.forward_end_points(torch.randn(1, 3, 21, 21))
    assert ep["head/logits"].shape[-2:] == (21, 21) and ep["decoder/aspp"].shape[-2:] == (6, 6)
    with pytest.raises(ConfigError, match=r"low_level_stride 8: .* strides \[2, 4\]"):
        plus("resnet18", 8, low_level_stride=8)
    with pytest.raises(ConfigError, match="low_level_stride"):  # the ASPP head has no decoder
        resnetkit.create_model("deeplabv3_resnet20", low_level_stride=1)


def test_decoder_changes_the_output_and_trains():
    """The low-level features reach the logits: perturbing only them changes the output."""
    model = plus("resnet20", 4).eval()
    x = torch.randn(2, 3, 24, 24)
    feats, low = model._features_and_low(x)
    a = model.forward_head(feats, low)
    b = model.forward_head(feats, low + torch.randn_like(low))
    assert a.shape == (2, 3, 12, 12) and not torch.allclose(a, b)  # logits at stride 2
    model.train()
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_save_load_round_trip(tmp_path):
    model = plus("resnet20", 4).eval()
    for m in model.modules():  # non-trivial BN statistics, so a wrong mapping cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = save_weights(model, tmp_path / "plus.safetensors", class_names=["bg", "a", "b"],
                        preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3})
    back = resnetkit.load(path)
    x = torch.randn(1, 3, 29, 29)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.head_name == "deeplabv3plus" and back.config.arch == "deeplabv3plus_resnet20"
    assert back.card.task == "segmentation"


@pytest.mark.parametrize("backbone,output_stride", [("resnet20", 1), ("resnet20", 3)])
def test_an_output_stride_it_cannot_do_is_one_config_error(backbone, output_stride):
    with pytest.raises(ConfigError, match="output_stride"):
        plus(backbone, output_stride)


def test_registered_for_every_backbone_and_listed(capsys):
    backbones = resnetkit.list_models(task="classification")
    assert resnetkit.list_models("deeplabv3plus_*") == [f"deeplabv3plus_{b}" for b in backbones]
    assert main(["models", "deeplabv3*_resnet2?", "--task", "segmentation"]) == 0  # a pattern: listing all is slow
    out = capsys.readouterr().out
    assert "deeplabv3plus_resnet20" in out and "deeplabv3_resnet20" in out


def test_cli_trains_the_head(tmp_path):
    data, out = tmp_path / "shapes", tmp_path / "run"
    assert main(["data", "make-shapes", str(data), "--n-train", "6", "--n-val", "2", "--size", "24"]) == 0
    assert main(["train", "--task", "segmentation", "--data", str(data), "--model", "resnet20", "--head",
                 "deeplabv3plus", "--output-stride", "4", "--crop-size", "25", "--batch-size", "3", "--set",
                 "schedule.steps=2", "--set", 'model.kwargs={"aspp_channels": 8}', "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and 0 <= rows[-1]["val_miou"] <= 1
    model = load(out / "model.safetensors")
    assert model.config.arch == "deeplabv3plus_resnet20" and model.head_name == "deeplabv3plus"
    assert model(torch.randn(1, 3, 24, 24)).shape == (1, 6, 24, 24)
