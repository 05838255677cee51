"""Segmentation defaults chosen from the data (resnetkit.train.seg_defaults), the losses for imbalanced
classes, backbone weights, and what a run records: the rules on described data sets, then tiny runs
through the CLI (the start block, config.json, overrides, resume, per-class IoU)."""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetkit import create_model
from resnetkit.cli import main
from resnetkit.data.segmentation import DataSummary, load_split, summarize
from resnetkit.errors import DataError
from resnetkit.train import TrainConfig
from resnetkit.train.config import resolve
from resnetkit.train.seg_defaults import backbone_info, choose_aspp, choose_crop, choose_output_stride, resolve_auto
from resnetkit.train.segmentation import class_weights, ohem_cross_entropy
from resnetkit.weights import Preprocessing, save_weights


def summary(side: int, bg: float = 0.8, n: int = 1000, classes: int = 6) -> DataSummary:
    rest = (1 - bg) / (classes - 1)
    return DataSummary("data", n, side, side, "img0", classes, (bg,) + (rest,) * (classes - 1))


def auto(side: int, **flags) -> TrainConfig:
    cfg = resolve(None, [], {"data.path": "data", "schedule.steps": 1, **flags}, task="segmentation")
    return resolve_auto(cfg, summary(side))[0]


def test_small_images_get_the_shapes_recipe():
    cfg = auto(64)
    m, d = cfg.model, cfg.data
    assert (m.backbone, m.head, m.output_stride) == ("resnet20", "slim", 4)  # the slim head: no ASPP settings
    assert m.kwargs == {}
    aspp = auto(64, **{"model.head": "aspp"}).model  # asked for: ASPP sized to the feature map
    assert aspp.kwargs == {"aspp_channels": 64, "aspp_rates": [2, 4, 6]}  # 16x16 cells
    assert (d.crop_size, d.min_scale, d.max_scale, d.batch_size, cfg.optim.lr) == (61, 0.75, 1.25, 16, 0.05)
    assert d.crop_size <= 64 and (d.crop_size - 1) % 4 == 0  # never above the image, corner-aligned
    assert m.loss == "ohem"  # 80% background
    cfg, _ = resolve_auto(resolve(None, [], {"data.path": "data", "schedule.steps": 1}, task="segmentation"),
                          summary(64, bg=0.3))
    assert cfg.model.loss == "ce"


def test_large_images_get_an_imagenet_backbone_and_deeplab_ranges():
    cfg = auto(500)
    m, d = cfg.model, cfg.data
    assert (m.backbone, m.head, m.output_stride, d.crop_size) == ("resnet18", "aspp", 16, 321)  # 321 = 16 * 20 + 1
    assert (d.min_scale, d.max_scale, d.batch_size, cfg.optim.lr) == (0.5, 2.0, 8, 0.025)
    assert m.kwargs == {"aspp_channels": 256, "aspp_rates": [3, 6, 9]}  # 21 cells


def test_rules_follow_the_size_and_the_backbone():
    r18, r20 = backbone_info("resnet18"), backbone_info("resnet20")
    assert (r18.imagenet_stem, r18.strides, r20.imagenet_stem, r20.strides) == (True, (4, 8, 16, 32), False, (4,))
    assert [choose_output_stride(s, r18)[0] for s in (40, 64, 128, 200, 256, 1000)] == [4, 4, 8, 8, 16, 16]
    assert choose_crop(100, 8)[0] == 97 and choose_crop(1000, 16)[0] == 321
    assert choose_aspp(33, 8, r18)[0]["aspp_rates"] == [1, 2, 3]


def test_explicit_values_win_and_steer_the_rest():
    cfg = auto(64, **{"model.backbone": "resnet18", "data.crop_size": 33, "optim.lr": 0.2, "model.loss": "ohem"})
    assert (cfg.model.backbone, cfg.data.crop_size, cfg.optim.lr, cfg.model.loss) == ("resnet18", 33, 0.2, "ohem")
    assert cfg.model.output_stride == 4  # 33 px at 4 -> 8 cells: the finest stride resnet18 reaches
    cfg = auto(64, **{"data.batch_size": 4})
    assert (cfg.data.batch_size, cfg.optim.lr) == (4, 0.0125)  # the lr follows the batch the user chose


def test_images_too_small_for_the_backbone():
    with pytest.raises(DataError, match=r"data.path=data: the images are 12 px .* smaller than the 17 px"):
        auto(12)


def test_class_weights_and_ohem_by_hand():
    w = class_weights([0.64, 0.16, 0.0, 0.2])  # 1/sqrt: 1.25, 2.5, -, 2.236; mean over present 1.995
    expected = torch.tensor([1.25, 2.5, 2.5, math.sqrt(5)]) / ((1.25 + 2.5 + math.sqrt(5)) / 3)
    expected[2] = expected[1]  # absent: the largest present weight
    assert torch.allclose(w, expected)
    # Four labelled pixels with true-class probabilities 0.9, 0.6, 0.5, 0.2 (two classes) and one ignored.
    p = torch.tensor([0.9, 0.6, 0.5, 0.2, 0.5])
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).reshape(1, 2, 1, 5)
    y = torch.tensor([[[0, 0, 0, 0, 255]]])
    # Below 0.7: 0.6, 0.5, 0.2 -> the mean of their -log p.
    assert torch.isclose(ohem_cross_entropy(logits, y), -(torch.log(torch.tensor([0.6, 0.5, 0.2]))).mean())
    # At least 3 of the 4 kept even with a threshold that keeps fewer: the 3 hardest.
    assert torch.isclose(ohem_cross_entropy(logits, y, thresh=0.3, min_kept=0.75),
                         -(torch.log(torch.tensor([0.6, 0.5, 0.2]))).mean())
    assert torch.isclose(ohem_cross_entropy(logits, y, thresh=0.3, min_kept=0.25), -torch.log(torch.tensor(0.2)))
    assert ohem_cross_entropy(logits, torch.full_like(y, 255)).item() == 0.0
    # Weighted CE: sum(w_y * ce) / sum(w_y), as F.cross_entropy(weight=...) computes it.
    y2 = torch.tensor([[[0, 1, 0, 1, 255]]])
    wt = torch.tensor([1.0, 3.0])
    ce = -torch.log(torch.tensor([0.9, 0.4, 0.5, 0.8]))
    hand = (ce * torch.tensor([1.0, 3.0, 1.0, 3.0])).sum() / 8
    assert torch.isclose(F.cross_entropy(logits, y2, weight=wt, ignore_index=255), hand)


def test_summary_counts_class_pixels(shapes):
    s = summarize(load_split(shapes, "train"))
    assert (s.n_images, s.median_side, s.min_side, s.num_classes) == (8, 24, 24, 6)
    assert math.isclose(sum(s.class_freq), 1.0) and s.class_freq[0] == max(s.class_freq)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    assert main(["data", "make-shapes", str(root), "--n-train", "8", "--n-val", "2", "--size", "24"]) == 0
    return root


def train(shapes, out, *extra):
    return main(["train", "--task", "segmentation", "--data", str(shapes), "--seed", "1", "--threads", "1",
                 "--amp", "none", "--set", "run.channels_last=false", "--out", str(out), *extra])


def test_defaults_through_the_cli(shapes, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="resnetkit.train"):
        assert train(shapes, tmp_path / "run", "--set", "schedule.steps=2", "--set", "schedule.max_steps=1",
                     "--loss", "weighted") == 0
    block = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("segmentation settings"))
    lines = block.splitlines()
    assert "8 training images, median shorter side 24 px" in lines[0]
    assert any(ln.split() == ["model.loss", "=", "weighted", "(set)"] for ln in lines)
    assert any(ln.startswith("  model.backbone") and "resnet20  (auto: images are 24 px" in ln for ln in lines)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    flat = saved["model"] | saved["data"] | {"lr": saved["optim"]["lr"]}
    assert {k: flat[k] for k in ("backbone", "head", "output_stride", "loss", "crop_size", "batch_size", "lr",
                                 "min_scale", "max_scale")} == {
        "backbone": "resnet20", "head": "slim", "output_stride": 4, "loss": "weighted", "crop_size": 21,
        "batch_size": 8, "lr": 0.025, "min_scale": 0.75, "max_scale": 1.25}
    # Per-class IoU: in the log line of every epoch and in metrics.jsonl, one value per class.
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(row["val_iou"]) == 6 and row["step"] == 1
    assert any("IoU background" in r.getMessage() and " cross " in r.getMessage() for r in caplog.records)
    # Resume: the saved (resolved) values are used as they are; nothing is chosen again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetkit.train"):
        assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--set", "schedule.max_steps=0"]) == 0
    block = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("segmentation settings"))
    assert "auto" not in block
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == saved["data"]
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_backbone_weights_errors_and_auto_arch(shapes, tmp_path, capsys):
    grey = save_weights(create_model("resnet20", num_classes=10, in_chans=1), tmp_path / "grey.safetensors",
                        preprocessing=Preprocessing(mean=(0.5,), std=(0.5,), channel_order="L"))
    assert train(shapes, tmp_path / "a", "--set", "schedule.steps=1", "--backbone-weights", str(grey)) == 2
    err = capsys.readouterr().err.strip()
    assert "grey.safetensors: a 1-channel (greyscale) model" in err and len(err.splitlines()) == 1
    r32 = save_weights(create_model("resnet32", num_classes=10), tmp_path / "r32.safetensors")
    assert train(shapes, tmp_path / "b", "--set", "schedule.steps=1", "--model", "resnet20",
                 "--backbone-weights", str(r32)) == 2
    err = capsys.readouterr().err.strip()
    assert "holds resnet32, but model.backbone is resnet20" in err and len(err.splitlines()) == 1
    # Left automatic, the backbone is the file's own architecture, its tensors copied in, the lr a fine-tuning one.
    assert train(shapes, tmp_path / "c", "--set", "schedule.steps=1", "--set", "optim.weight_decay=0",
                 "--set", "optim.momentum=0", "--backbone-weights", str(r32)) == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["model"]["backbone"] == "resnet32" and cfg["optim"]["lr"] == pytest.approx(0.007 * 8 / 16)


def test_images_too_small_through_the_cli(tmp_path, capsys):
    root = tmp_path / "tiny"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(root / "SegmentationClass" / f"{i}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("0\n1\n")
    assert main(["train", "--task", "segmentation", "--data", str(root), "--set", "schedule.steps=1",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the images are 10 px" in err and "upscale the images" in err
    assert not (tmp_path / "r").exists()


def test_pretrained_tag_with_1001_classes_and_a_bgr_file(shapes, tmp_path, monkeypatch):
    # A converted TF-slim file in the cache stands for the download: 1001 logits (row 0 'background').
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    slim = create_model("resnet_v2_50", num_classes=1001)
    save_weights(slim, tmp_path / "cache" / "converted" / "resnet_v2_50.tf_slim.safetensors",
                 preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3))
    assert train(shapes, tmp_path / "slim", "--set", "schedule.steps=1", "--set", "schedule.warmup_steps=0",
                 "--set", "optim.lr=1e-9", "--init", "resnet_v2_50.tf_slim") == 0
    cfg = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert (cfg["model"]["backbone"], cfg["model"]["backbone_weights"]) == ("resnet_v2_50", "resnet_v2_50.tf_slim")
    # A BGR file (Caffe/VGG conversions): the first convolution turned to read RGB, the statistics too.
    from resnetkit.train.segmentation import load_backbone
    src = create_model("resnet20", num_classes=10)
    bgr = save_weights(src, tmp_path / "bgr.safetensors", preprocessing=Preprocessing(
        mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), channel_order="BGR"))
    seg = create_model("deeplabv3_resnet20", num_classes=6, output_stride=4)
    pre = load_backbone(seg, str(bgr), "resnet20")
    assert (pre.mean, pre.std) == ((0.3, 0.2, 0.1), (0.6, 0.5, 0.4))
    got, want = seg.backbone.state_dict(), src.state_dict()
    assert torch.equal(got["conv1.conv.weight"], want["conv1.conv.weight"].flip(1))
    assert all(torch.equal(got[k], want[k]) for k in got if k != "conv1.conv.weight")
