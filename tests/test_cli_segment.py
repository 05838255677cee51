"""End to end through `resnetkit.cli.main`: data make-shapes -> train --task segmentation -> eval -> segment."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    assert main(["data", "make-shapes", str(root), "--n-train", "8", "--n-val", "3", "--size", "24",
                 "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    rc = main(["train", "--task", "segmentation", "--data", str(shapes), "--model", "resnet20", "--head", "aspp",
               "--output-stride", "4", "--crop-size", "25", "--batch-size", "4", "--set", "schedule.steps=3",
               "--set", 'model.kwargs={"aspp_channels": 8}', "--out", str(out)])
    assert rc == 0
    return out


def test_make_shapes_layout(shapes):
    assert sorted(p.name for p in shapes.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass",
                                                       "classes.txt"]
    assert len((shapes / "ImageSets/Segmentation/train.txt").read_text().split()) == 8
    assert len(list((shapes / "SegmentationClass").glob("*.png"))) == 11


def test_train_writes_a_segmentation_weights_file(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and 0 <= rows[-1]["val_miou"] <= 1
    from resnetkit.weights import load

    model = load(trained / "model.safetensors")
    assert model.config.to_dict()["arch"] == "deeplabv3_resnet20" and model.head_name == "aspp"
    assert model.card.task == "segmentation" and len(model.card.class_names) == 6
    assert (trained / "learning_curve.png").is_file() and (trained / "checkpoint.pt").is_file()


def test_eval_prints_miou_and_per_class_iou(trained, shapes, capsys):
    assert main(["eval", "--weights", str(trained / "model.safetensors"), "--data", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "pixel accuracy" in out and "circle" in out and "IoU" in out
    result = json.loads((trained / "eval_segmentation.json").read_text())
    assert result["n"] == 3 and np.array(result["confusion_matrix"]).shape == (6, 6)
    assert sum(map(sum, result["confusion_matrix"])) == 3 * 24 * 24  # every pixel of the val split


def test_segment_writes_mask_and_overlay(trained, shapes, tmp_path, capsys):
    img = shapes / "JPEGImages" / "val_000000.jpg"
    odd = tmp_path / "odd.png"  # another size than training: fully convolutional
    Image.fromarray(np.full((19, 30, 3), 90, np.uint8)).save(odd)
    out = tmp_path / "seg"
    assert main(["segment", str(img), str(odd), "--weights", str(trained / "model.safetensors"), "-o", str(out)]) == 0
    with Image.open(out / "val_000000.png") as m:
        assert m.mode == "P" and m.size == (24, 24) and np.asarray(m).max() < 6
    with Image.open(out / "odd.png") as m, Image.open(out / "odd_overlay.png") as o:
        assert m.size == o.size == (30, 19) and o.mode == "RGB"
    assert not list(out.glob(".*"))  # no temp files left behind
    assert "val_000000" in capsys.readouterr().out


def test_backbone_weights_and_freeze_bn_flags(shapes, tmp_path):
    cls = resnetkit.create_model("resnet20", num_classes=10)
    path = save_weights(cls, tmp_path / "cls.safetensors", preprocessing={"mean": [0.4] * 3, "std": [0.2] * 3})
    out = tmp_path / "ft"
    assert main(["train", "--task", "segmentation", "--data", str(shapes), "--model", "resnet20", "--output-stride",
                 "4", "--crop-size", "25", "--batch-size", "4", "--set", "schedule.steps=1", "--backbone-weights",
                 str(path), "--freeze-bn", "--out", str(out)]) == 0
    from resnetkit.weights import load

    model = load(out / "model.safetensors")
    assert model.card.preprocessing.mean == (0.4,) * 3  # the backbone's normalisation is kept
    # frozen BN statistics: the backbone's running means are still the classification model's
    torch.testing.assert_close(model.backbone.conv1.bn.running_mean, cls.conv1.bn.running_mean)


@pytest.mark.parametrize("case", ["missing_split", "bad_mask", "classification_weights"])
def test_user_errors_name_the_file(case, shapes, tmp_path, capsys):
    if case == "classification_weights":
        path = save_weights(resnetkit.create_model("resnet20"), tmp_path / "cls.safetensors")
        argv, needle = ["segment", str(shapes / "JPEGImages" / "val_000000.jpg"), "--weights", str(path), "-o",
                        str(tmp_path / "o")], "cls.safetensors"
    else:
        import shutil

        data = tmp_path / "data"
        shutil.copytree(shapes, data)
        if case == "missing_split":
            (data / "ImageSets/Segmentation/val.txt").unlink()
            needle = "val.txt"
        else:
            Image.fromarray(np.zeros((5, 5), np.uint8)).save(data / "SegmentationClass" / "train_000003.png")
            needle = "train_000003.png"
        argv = ["train", "--task", "segmentation", "--data", str(data), "--model", "resnet20", "--output-stride", "4",
                "--batch-size", "4", "--set", "schedule.steps=1", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_a_segmentation_file(trained, shapes, capsys):
    weights = str(trained / "model.safetensors")
    assert main(["predict", str(shapes / "JPEGImages" / "val_000000.jpg"), "--weights", weights]) == 2
    err = capsys.readouterr().err
    assert "resnetkit segment" in err and weights in err
