"""`resnetkit data make-scenes` / resnetkit.data.scenes: Fashion-MNIST items composed into VOC-layout scenes.
The items come from a small idx set the tests write (tests/idx_data.py), passed with --data-dir / data_dir."""

import json

import numpy as np
import pytest
from PIL import Image

from resnetkit.cli import main
from resnetkit.data.datasets import IDX_DATASETS
from resnetkit.data.scenes import SceneSources, make_scene, make_scenes
from resnetkit.data.segmentation import load_split
from resnetkit.errors import OutputExistsError
from tests.idx_data import fashion_like

pytestmark = pytest.mark.usefixtures("one_thread")
FM_CLASSES = list(IDX_DATASETS["fashion_mnist"][4])


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    """The idx files' folder, as a string for --data-dir."""
    return str(fashion_like(tmp_path_factory.mktemp("fm")))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fm):
    root = tmp_path_factory.mktemp("scenes") / "data"
    assert main(["data", "make-scenes", str(root), "--n-train", "6", "--n-val", "3", "--size", "48",
                 "--seed", "3", "--data-dir", fm]) == 0
    return root


def test_layout_and_class_names(scenes):
    assert sorted(p.name for p in scenes.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass",
                                                       "classes.txt"]
    assert (scenes / "classes.txt").read_text().splitlines() == ["background", *FM_CLASSES]
    splits = {s: (scenes / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val")}
    assert splits == {"train": [f"train_{i:06d}" for i in range(6)], "val": [f"val_{i:06d}" for i in range(3)]}
    for name in splits["train"] + splits["val"]:
        with Image.open(scenes / "JPEGImages" / f"{name}.jpg") as im, \
                Image.open(scenes / "SegmentationClass" / f"{name}.png") as m:
            assert im.mode == "RGB" and m.mode == "P" and im.size == m.size == (48, 48)
            assert np.asarray(m).max() <= 10
    assert not list(scenes.rglob(".*"))  # no temp files left behind


def test_the_segmentation_loader_reads_it(scenes):
    train, val = load_split(scenes, "train"), load_split(scenes, "val")
    assert len(train.images) == 6 and len(val.images) == 3 and train.class_names == ["background", *FM_CLASSES]
    masks = np.stack([m.numpy() for m in train.masks + val.masks])
    assert masks.max() <= 10 and (masks == 0).any() and (masks > 0).mean() > 0.05  # items cover some pixels
    assert len(np.unique(masks)) >= 4  # several item classes across a few scenes


def test_train_and_eval_read_it_unchanged(scenes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "segmentation", "--data", str(scenes), "--model", "resnet20", "--head", "aspp",
                 "--output-stride", "4", "--crop-size", "33", "--batch-size", "3", "--set", "schedule.steps=1",
                 "--set", 'model.kwargs={"aspp_channels": 8}', "--out", str(out)]) == 0
    assert main(["eval", "--weights", str(out / "model.safetensors"), "--data", str(scenes)]) == 0
    assert "Ankle boot" in capsys.readouterr().out
    result = json.loads((out / "eval_segmentation.json").read_text())
    assert result["n"] == 3 and np.array(result["confusion_matrix"]).shape == (11, 11)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, fm):
    a = make_scenes(tmp_path / "a", n_train=2, n_val=1, size=40, seed=5, data_dir=fm)
    b = make_scenes(tmp_path / "b", n_train=3, n_val=1, size=40, seed=5, data_dir=fm)  # more images: first ones stay
    c = make_scenes(tmp_path / "c", n_train=2, n_val=1, size=40, seed=6, backgrounds="textures", data_dir=fm)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    assert len(files) == 6
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert not any((a / f).read_bytes() == (c / f).read_bytes() for f in files)


def test_without_data_dir_the_set_is_found_in_the_data_cache(tmp_path, monkeypatch):
    """Where `resnetkit train --data fashion-mnist` looks (conftest hides the Debian folder): $RESNETKIT_DATA."""
    fashion_like(tmp_path / "cache" / "fashion_mnist")
    monkeypatch.setenv("RESNETKIT_DATA", str(tmp_path / "cache"))
    assert main(["data", "make-scenes", str(tmp_path / "out"), "--n-train", "1", "--n-val", "1", "--size", "32"]) == 0
    assert len(list((tmp_path / "out" / "JPEGImages").glob("*.jpg"))) == 2


def test_val_items_come_from_the_test_split_and_later_items_occlude():
    """Synthetic sources: train items are solid squares of class 3, test items empty; one scene at a time."""
    solid, empty = np.full((4, 28, 28), 255, np.uint8), np.zeros((4, 28, 28), np.uint8)
    src = SceneSources(items={"train": solid, "val": empty}, labels={"train": np.full(4, 2), "val": np.zeros(4)},
                       class_names=("background", *FM_CLASSES), photos=())
    img, mask = make_scene(src, 0, "train", 0, size=64, min_items=3, max_items=3, backgrounds="textures")
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and set(np.unique(mask)) == {0, 3}
    _, mask = make_scene(src, 0, "val", 0, size=64, backgrounds="textures")
    assert not mask.any()
    # Two classes, both solid squares in one flat tint each: where they overlap, the label must be the class
    # whose colour shows (one colour per labelled region), and the item on top is a whole square.
    src = SceneSources(items={"train": solid[:2], "val": empty}, labels={"train": np.array([0, 1]), "val": np.zeros(4)},
                       class_names=src.class_names, photos=())
    checked = 0
    for i in range(30):
        img, mask = make_scene(src, 1, "train", i, size=64, min_items=2, max_items=2, backgrounds="textures")
        regions = [mask == k for k in np.unique(mask[mask > 0])]
        if len(regions) < 2 or not (regions[0].any() and regions[1].any()):
            continue  # both items of one class: nothing to tell apart
        assert all(img[r].astype(float).std(0).max() < 12 for r in regions)  # noise sigma 3, tints far apart
        boxes = [r[np.ix_(r.any(1), r.any(0))].all() for r in regions]
        assert any(boxes)
        checked += int(not all(boxes))  # they overlapped
    assert checked >= 2


def test_output_policy_and_errors_are_one_line(scenes, fm, tmp_path, capsys):
    assert main(["data", "make-scenes", str(scenes), "--n-train", "1", "--n-val", "1", "--size", "32",
                 "--data-dir", fm]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetkit: error:") and "not empty" in err and "--overwrite" in err and "\n" not in err
    with pytest.raises(OutputExistsError):
        make_scenes(scenes, n_train=1, n_val=1, size=32, data_dir=fm)
    before = (scenes / "JPEGImages" / "train_000000.jpg").read_bytes()
    assert main(["data", "make-scenes", str(scenes), "--n-train", "6", "--n-val", "3", "--size", "48", "--seed", "3",
                 "--data-dir", fm, "--overwrite"]) == 0
    assert (scenes / "JPEGImages" / "train_000000.jpg").read_bytes() == before
    empty = tmp_path / "no-fm"
    empty.mkdir()
    assert main(["data", "make-scenes", str(tmp_path / "out"), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetkit: error: Fashion-MNIST") and "\n" not in err and not (tmp_path / "out").exists()
    assert main(["data", "make-scenes", str(tmp_path / "out"), "--size", "8", "--data-dir", fm]) == 2
    assert "size 8" in capsys.readouterr().err
