"""timm as an oracle for the residual family: every registered net that timm also has (same name) gets
timm's parameter count and, with timm's random weights mapped in, timm's outputs. timm is a test
dependency only (the `test` extra); no weights are downloaded."""

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import resnetkit
from resnetkit.cli import main
from resnetkit.convert import ConversionError, from_timm
from resnetkit.convert.timm import FAMILIES, detect_arch
from resnetkit.models import list_models, model_defaults
from resnetkit.models.profile import count_params

SHARED = [n for n in list_models(task="classification") if model_defaults(n)["family"] in FAMILIES]


def timm_net(name: str, **kw) -> nn.Module:
    """timm's net with random weights and non-trivial norms (BN statistics, BN and GN affines).

    Built on the meta device and filled from one pool of normal samples at random offsets (each tensor
    gets its own values, so a swapped mapping cannot pass): timm's own init of a 217M-parameter BiT
    costs seconds."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kw)
    model.to_empty(device="cpu")
    state = model.state_dict()  # shares storage with the parameters and buffers
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(max(t.numel() for t in state.values()) + 1, generator=g)
    with torch.no_grad():
        for key, t in state.items():
            start = int(torch.randint(0, pool.numel() - t.numel() + 1, (1,), generator=g))
            v = pool[start:start + t.numel()].view(t.shape)
            if key.endswith("num_batches_tracked"):
                t.zero_()
            elif key.endswith("running_var") or (t.dim() == 1 and key.endswith("weight")):
                t.copy_(v.abs() * 0.5 + 0.5)  # variances and norm scales around 1
            elif t.dim() == 1:
                t.copy_(v * 0.1)  # running means and biases
            else:  # conv / linear weights, He-scaled by their fan-in so activations stay O(1)
                t.copy_(v * (2.0 / (t.numel() // t.shape[0])) ** 0.5)
    return model.eval()


def assert_same_outputs(ours, theirs, sizes=((32, 32), (65, 65))):
    for size in sizes:  # even, and odd at every stage (65 -> 33 -> 17 -> 9 -> 5 -> 3): ceil-mode pools' edges
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref, got = theirs(x), ours(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_every_shared_family_name_is_a_timm_model():
    """The families the converter serves are exactly names that timm registers (so each is tested below)."""
    assert len(SHARED) == 23 and set(SHARED) <= set(timm.list_models())


@pytest.mark.parametrize("name", SHARED)
def test_parameter_count_equals_timm(name):
    with torch.device("meta"):
        assert count_params(resnetkit.create_model(name)) == count_params(timm.create_model(name))


@pytest.mark.parametrize("name", SHARED)
def test_outputs_equal_timm(name):
    theirs = timm_net(name, num_classes=7)
    ours = from_timm(theirs.state_dict(), arch=name).eval()
    assert ours.config.arch == name and ours.num_classes == 7
    assert count_params(ours) == count_params(theirs)
    assert_same_outputs(ours, theirs)


@pytest.mark.parametrize("name", ["resnet34", "seresnext50_32x4d", "resnetv2_50x1_bit"])
def test_dense_features_equal_timm_at_output_stride_8(name):
    """timm's dilation rules are slim's: the strided unit's 3x3 keeps the old rate. (The D nets' avg-pool
    shortcut differs: timm zero-pads its stride-1 stand-in, ours averages real cells only.)"""
    theirs = timm_net(name, num_classes=0, global_pool="", output_stride=8)
    ours = from_timm(theirs.state_dict(), arch=name, num_classes=None, global_pool=False, output_stride=8).eval()
    x = torch.randn(1, 3, 61, 61)
    with torch.no_grad():
        ref, got = theirs.forward_features(x), ours.forward_features(x)
    assert got.shape[-2:] == (8, 8)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", ["resnet50", "resnet50c", "resnet50d", "seresnext50_32x4d", "wide_resnet101_2",
                                  "resnext101_64x4d", "resnetv2_50x3_bit", "resnetv2_101"])
def test_arch_is_detected_from_keys_and_shapes(name):
    with torch.device("meta"):
        state = timm.create_model(name, num_classes=3).state_dict()
    assert detect_arch(state) == name


@pytest.mark.parametrize("name,match", [
    ("ecaresnet50d", r"16 timm keys did not map onto a resnetkit architecture: layer1\.0\.se\.conv\.weight"),
    ("resnetv2_50d", r"timm keys did not map .*stem\.conv1\.weight"),
    ("resnet26d", r"matches no resnetkit architecture \(closest: resnet50d; it has \d+ tensors the state dict lacks"),
    ("resnet10t", r"closest: resnet18d; 6 timm keys have no place in it: conv1\.0\.weight"),
])
def test_foreign_architecture_fails_in_one_line_naming_the_keys(name, match):
    with torch.device("meta"):
        state = timm.create_model(name).state_dict()
    with pytest.raises(ConversionError, match=match) as e:
        from_timm(state)
    assert "\n" not in str(e.value)


def test_wrong_arch_names_the_mismatch():
    with torch.device("meta"):
        state = timm.create_model("resnet50").state_dict()
    with pytest.raises(ConversionError, match=r"missing in timm state dict: blocks\.block1\.unit_1\.se\.fc1"):
        from_timm(state, arch="seresnet50")


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_cli_convert_from_timm(tmp_path, capsys, fmt):
    theirs = timm_net("resnet18d")
    src = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":  # the Hugging Face hub's format
        safetensors.torch.save_file(theirs.state_dict(), src)
        arch = ["--arch", "resnet18d"]
    else:
        torch.save(theirs.state_dict(), src)
        arch = []  # detected
    out = tmp_path / "r18d.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--from", "timm", *arch]) == 0
    assert "resnet18d" in capsys.readouterr().out
    ours = resnetkit.load(out)
    assert ours.card.class_names[0] == "tench"
    assert_same_outputs(ours, theirs, sizes=[(48, 48)])


def test_cli_convert_from_timm_foreign_arch_is_one_line(tmp_path, capsys):
    src = tmp_path / "eca.pth"
    with torch.device("meta"):
        meta = timm.create_model("ecaresnet26t").state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in meta.items()}, src)
    assert main(["convert", str(src), "-o", str(tmp_path / "x.safetensors"), "--from", "timm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "timm keys did not map" in err and "se.conv.weight" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
