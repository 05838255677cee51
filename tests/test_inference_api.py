"""The library functions behind the CLI, called from Python: predict, predict_folder, evaluate_file,
segment and quantize, each on small models and data the test makes."""

import json
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.data.shapes import make_shapes
from resnetkit.errors import ConfigError, DataError
from resnetkit.export import make_backend
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import randomize_bn, seg_model

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory):
    """A resnet20 for sklearn's 8x8 grey digits, with its card (random weights: the tests check plumbing)."""
    torch.manual_seed(0)
    model = randomize_bn(resnetkit.create_model("resnet20", num_classes=10, in_chans=1)).eval()
    pre = Preprocessing(size=(8, 8), mean=(0.25,), std=(0.3,), channel_order="L")
    return save_weights(model, tmp_path_factory.mktemp("w") / "digits.safetensors", class_names=DIGITS,
                        preprocessing=pre)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / name)
    return root


def test_predict_takes_paths_folders_and_pil_images(digits_weights, photos):
    model = resnetkit.load(digits_weights)
    pil = Image.open(photos / "a.png")
    rows = resnetkit.predict(model, [photos / "b.jpg", photos / "sub", pil], top_k=3)
    assert [r["image"] for r in rows] == [str(photos / "b.jpg"), str(photos / "sub" / "c.png"), "<image>"]
    assert all(len(r["predictions"]) == 3 for r in rows)
    # the same numbers as running the model on the card's transform by hand
    x = model.card.preprocessing.transform()(pil)[None]
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    best = rows[2]["predictions"][0]
    assert best["index"] == int(probs.argmax()) and best["class"] == DIGITS[best["index"]]
    assert best["prob"] == pytest.approx(float(probs.max()), rel=1e-5)
    # a path to the weights works as well as a loaded model
    again = resnetkit.predict(digits_weights, [pil], top_k=3)[0]["predictions"]
    assert [p["index"] for p in again] == [p["index"] for p in rows[2]["predictions"]]
    assert [p["prob"] for p in again] == pytest.approx([p["prob"] for p in rows[2]["predictions"]], rel=1e-5)


def test_predict_errors_are_typed(digits_weights, tmp_path):
    with pytest.raises(ConfigError, match="top_k"):
        resnetkit.predict(digits_weights, [tmp_path], top_k=0)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: unreadable image"):
        resnetkit.predict(digits_weights, [bad])
    with pytest.raises(FileNotFoundError):
        resnetkit.predict(digits_weights, [tmp_path / "missing.jpg"])


def test_predict_folder_writes_every_image(digits_weights, photos, tmp_path):
    out = tmp_path / "preds.jsonl"
    r = resnetkit.predict_folder(digits_weights, [photos], out, workers=0, top_k=2, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["images"] == 3 and r["failed"] == 0 and len(rows) == 3
    direct = resnetkit.predict(digits_weights, [photos], top_k=2)
    for a, b in zip(rows, direct):
        assert a["image"] == b["image"] and [p["index"] for p in a["predictions"]] == \
            [p["index"] for p in b["predictions"]]


def test_evaluate_file_classification(digits_weights):
    result = resnetkit.evaluate_file(digits_weights, "digits", batch_size=64)
    cm = np.asarray(result["confusion_matrix"])
    assert result["n"] == cm.sum() == 359 and cm.shape == (10, 10)  # sklearn's 1797 digits: a 20% test split
    assert result["top1"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(result["per_class_accuracy"]) == set(DIGITS)
    with pytest.raises(ValueError, match="batch_size"):
        resnetkit.evaluate_file(digits_weights, "digits", batch_size=-1)


def test_evaluate_file_and_segment_for_a_segmentation_model(tmp_path):
    data = make_shapes(tmp_path / "shapes", n_train=2, n_val=3, size=24, seed=0)
    model = randomize_bn(seg_model("resnet20", 6, "aspp", 4, aspp_channels=8)).eval()
    path = save_weights(model, tmp_path / "seg.safetensors", class_names=[f"c{i}" for i in range(6)],
                        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3))
    result = resnetkit.evaluate_file(path, str(data), split="val")
    assert result["n"] == 3 and sum(map(sum, result["confusion_matrix"])) == 3 * 24 * 24
    assert 0 <= result["miou"] <= 1 and set(result["iou"]) == {f"c{i}" for i in range(6)}
    # two inputs with the same stem get distinct outputs, and the mapping is returned
    img = Image.open(data / "JPEGImages" / "val_000000.jpg")
    img.save(tmp_path / "photo.png")
    img.save(tmp_path / "photo.jpg")
    rows = resnetkit.segment(path, [tmp_path / "photo.png", tmp_path / "photo.jpg"], tmp_path / "out")
    masks = {r["mask"] for r in rows}
    assert len(masks) == 2 and all(Image.open(m).mode == "P" for m in masks)
    assert all(abs(sum(r["fractions"].values()) - 1) < 1e-9 for r in rows)
    with pytest.raises(ConfigError, match="segmentation model"):
        resnetkit.segment(resnetkit.create_model("resnet20"), [tmp_path / "photo.png"], tmp_path / "o2")


def test_quantize_reports_int8_accuracy(digits_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    model = resnetkit.load(digits_weights)
    onnx_path = tmp_path / "digits.onnx"
    resnetkit.export.export_model(resnetkit.export.prepare_for_inference(model, channels_last=False), onnx_path,
                                  "onnx", input_size=(8, 8), in_chans=1, reference=model)
    r = resnetkit.quantize(model, onnx_path, "digits", calib_n=64, eval_n=100)
    assert r["path"] == tmp_path / "digits.int8.onnx" and r["path"].is_file() and r["n"] == 100
    assert 0 <= r["top1_int8"] <= 1 and r["agreement"] > 0.5


def test_onnxruntime_backend_leaves_no_temporary_folder(digits_weights, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = resnetkit.load(digits_weights)
    run = make_backend("onnxruntime", model, example=torch.randn(2, 1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-4)
    assert list(tmp_path.iterdir()) == []
