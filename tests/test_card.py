"""The file format's typed metadata: ModelCard and Preprocessing, schema checks, and files of layout 1."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import resnetkit
from resnetkit.errors import CheckpointError
from resnetkit.models import SegModel
from resnetkit.weights import ModelCard, Preprocessing, input_shape, load, read_card, save_weights

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def test_card_round_trips_through_a_file(tmp_path):
    model = resnetkit.create_model("resnet20", num_classes=3).eval()
    pre = Preprocessing(size=(32, 32), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), name="mine")
    path = save_weights(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"], preprocessing=pre,
                        source="test", metrics={"top1": 0.5}, extra={"steps": 3})
    card = read_card(path)
    assert card == ModelCard(model.config, ("a", "b", "c"), pre, "test", {"top1": 0.5}, {"steps": 3})
    assert card.task == "classification" and load(path).card == card
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    # a loaded model saved again keeps its card; a keyword replaces one field only
    again = save_weights(load(path), tmp_path / "again.safetensors", source="copied")
    assert read_card(again) == card.replace(source="copied")


@pytest.mark.parametrize("bad,match", [
    ({"mean": [0.5], "std": [0.5, 0.5, 0.5]}, "need 3 values"),
    ({"std": [0.5, 0.0, 0.5]}, "std must be positive"),
    ({"mean": [float("nan")] * 3}, "non-finite"),
    ({"channel_order": "CMYK"}, "channel_order"),
    ({"size": [0, 32]}, "positive integer"),
    ({"size": 32}, r"\[H, W\]"),
    ({"crop_fraction": 1.5, "size": [8, 8]}, "crop_fraction"),
    ({"colour": "red"}, "unknown keys"),
    ({"interpolation": "lanczos9"}, "interpolation"),
])
def test_preprocessing_is_checked_when_read(bad, match):
    with pytest.raises(CheckpointError, match=match):
        Preprocessing.from_dict({"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, **bad})


def test_hostile_card_values_are_refused(tmp_path):
    model = resnetkit.create_model("resnet20", num_classes=2)
    path = save_weights(model, tmp_path / "m.safetensors")
    tensors = load_file(path)

    def write(card: str) -> Path:
        out = tmp_path / "hostile.safetensors"
        save_file(tensors, out, metadata={"resnetkit.format_version": "2", "resnetkit.card": card})
        return out

    good = read_card(path).to_dict()
    for card, match in [("{not json", "not valid JSON"), ("[]", "JSON object"),
                        (json.dumps({**good, "config": {"arch": 3}}), "config"),
                        (json.dumps({**good, "class_names": [1, 2]}), "class_names"),
                        (json.dumps({**good, "config": {"arch": "resnet999", "kwargs": {}}}), "unknown model")]:
        with pytest.raises(CheckpointError, match=match):
            load(write(card))
    with pytest.raises(ValueError):  # a CheckpointError is a ValueError for Python callers
        load(write("[]"))


def test_transform_matches_the_documented_order():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    grey = Preprocessing(size=(8, 12), mean=(0.5,), std=(0.25,), channel_order="L")
    x = grey(im)
    ref = (np.asarray(im.convert("L").resize((12, 8), Image.BILINEAR), np.float32) / 255 - 0.5) / 0.25
    assert x.shape == (1, 8, 12)
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-5)
    bgr = Preprocessing(size=(40, 60), mean=(0, 0, 0), std=(1, 1, 1), channel_order="BGR")(im)
    rgb = Preprocessing(size=(40, 60), mean=(0, 0, 0), std=(1, 1, 1))(im)
    assert torch.equal(bgr, rgb.flip(0))
    fcn = Preprocessing(mean=(0, 0, 0), std=(1, 1, 1))(im)  # no size: the image's own
    assert fcn.shape == (3, 40, 60)


def test_input_shape_prefers_the_card():
    model = resnetkit.create_model("resnet20", in_chans=1)
    assert input_shape(model) == (1, 32, 32) and input_shape(model, (9, 7)) == (1, 9, 7)
    model.card = ModelCard(model.config, preprocessing=Preprocessing(size=(28, 28), mean=(0.5,), std=(0.5,),
                                                                     channel_order="L"))
    assert input_shape(model) == (1, 28, 28)


# ------------------------------------------------------------------ files written by resnetkit 0.1 (layout 1)
def test_layout_1_classification_file_still_loads():
    expected = json.loads((LEGACY / "expected.json").read_text())
    model = resnetkit.load(LEGACY / "classification_v1.safetensors")
    card = model.card
    assert card.arch == "resnet20" and card.config.kwargs == {"num_classes": 3, "in_chans": 1}
    assert card.class_names == ("a", "b", "c") and card.source == "resnetkit train -> runs/legacy"
    assert card.preprocessing == Preprocessing(size=(28, 28), mean=(0.286,), std=(0.353,), channel_order="L")
    assert card.metrics == {"test_top1_err": 0.5} and card.extra == {"steps": 1}
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor(expected["classification"]), rtol=1e-5, atol=1e-5)


def test_layout_1_segmentation_file_loads_through_the_registry():
    expected = json.loads((LEGACY / "expected.json").read_text())
    model = resnetkit.load(LEGACY / "segmentation_v1.safetensors")
    card = model.card
    assert isinstance(model, SegModel) and card.arch == "deeplabv3_resnet20" and card.task == "segmentation"
    assert card.config.kwargs["output_stride"] == 4 and card.config.kwargs["aspp_channels"] == 8
    assert card.preprocessing.mean == (0.5,) * 3 and card.preprocessing.size is None
    assert card.metrics == {"val_miou": 0.1}
    xs = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(xs)[0, :, ::4, ::4]
    torch.testing.assert_close(got, torch.tensor(expected["segmentation"]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ never trust a file
def _data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 header length, header, data


def test_a_flipped_bit_in_the_tensors_is_reported(tmp_path):
    path = save_weights(resnetkit.create_model("resnet20", num_classes=2), tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path) + 1000] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load(path)


def test_non_finite_tensors_are_refused_unless_allowed(tmp_path):
    model = resnetkit.create_model("resnet20", num_classes=2)
    with torch.no_grad():
        model.logits.weight[0, 0] = float("nan")
    path = save_weights(model, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="logits.weight holds NaN or Inf.*allow_nonfinite"):
        load(path)
    assert torch.isnan(load(path, allow_nonfinite=True).logits.weight).any()


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[Hgotcha", "", "a" * 201, "tab\there"])
def test_class_names_that_could_hurt_a_terminal_are_refused(tmp_path, name):
    model = resnetkit.create_model("resnet20", num_classes=2)
    path = save_weights(model, tmp_path / "m.safetensors")
    tensors, card = load_file(path), read_card(path).to_dict()
    hostile = tmp_path / "hostile.safetensors"
    save_file(tensors, hostile, metadata={"resnetkit.format_version": "2",
                                          "resnetkit.card": json.dumps({**card, "class_names": ["ok", name]})})
    with pytest.raises(CheckpointError, match="class name"):
        read_card(hostile)


def test_weights_files_get_a_normal_files_mode(tmp_path):
    import os

    path = save_weights(resnetkit.create_model("resnet20", num_classes=2), tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
