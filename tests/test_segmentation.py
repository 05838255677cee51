"""Segmentation: VOC loading, the shapes generator, mIoU, model shapes, output-stride agreement, backbone
weights, frozen BN, joint augmentation, save/load and exact resume."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

import resnetkit
from resnetkit.data.segmentation import IGNORE, JointAugment, SegSet, load_split, palette_png, voc_palette
from resnetkit.data.shapes import SHAPE_CLASSES, make_shapes
from resnetkit.errors import UserError
from resnetkit.export.segment import aligned_size, predict_logits
from resnetkit.models import ResNet, SegModel, resnet_v2_block, upsample_logits
from resnetkit.train import Trainer, resolve
from resnetkit.train.evaluate import evaluate_segmentation
from resnetkit.train.metrics import confusion_matrix, scores
from resnetkit.weights import load, load_backbone_weights, save_weights
from tests.conftest import randomize_bn, seg_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- data

def _write_voc(root, items, classes=("background", "a", "b"), splits=None):
    """items: {id: (image HxWx3 uint8, mask HxW uint8 or an (H, W, 3) RGB-coded array)}."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, (img, mask) in items.items():
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        m = palette_png(mask) if mask.ndim == 2 else Image.fromarray(mask)
        m.save(root / "SegmentationClass" / f"{name}.png")
    for split, ids in (splits or {"train": list(items)}).items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def _mask(h=6, w=8):
    m = np.zeros((h, w), np.uint8)
    m[1:3, 1:4] = 1
    m[3:5, 5:7] = 2
    m[0, :] = IGNORE  # VOC's object boundaries are 255
    return m


def test_voc_palette_matches_vocdevkit():
    pal = voc_palette()
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]


def test_voc_loader_palette_ignore_and_splits(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    rgb_mask = voc_palette()[_mask()]  # the same labels, colour-coded as an RGB PNG
    root = _write_voc(tmp_path / "voc", {"x1": (img, _mask()), "x2": (img, rgb_mask), "x3": (img, _mask())},
                      splits={"train": ["x2", "x1"], "val": ["x3"]})
    train, val = load_split(root, "train"), load_split(root, "val")
    assert train.names == ["x2", "x1"] and val.names == ["x3"]  # the split file's order
    assert train.class_names == ["background", "a", "b"]
    for m in train.masks + val.masks:
        assert m.dtype == torch.uint8 and m.tolist() == _mask().tolist()  # palette and RGB decode alike
    assert train.images[0].shape == (3, 6, 8) and train.images[0].dtype == torch.uint8
    # the ignore label counts nowhere in the metrics
    cm = confusion_matrix(train.masks[0], train.masks[0], 3)
    assert int(cm.sum()) == int((train.masks[0] != IGNORE).sum()) == 6 * 8 - 8


def test_voc_root_found_below_vocdevkit_and_default_classes(tmp_path):
    img = np.zeros((6, 8, 3), np.uint8)
    m = _mask()
    m[2, 2] = 20  # tvmonitor: valid with VOC's 21 classes
    _write_voc(tmp_path / "VOCdevkit" / "VOC2012", {"a": (img, m)}, classes=None)
    s = load_split(tmp_path, "train")
    assert s.num_classes == 21 and s.class_names[20] == "tvmonitor" and int(s.masks[0][2, 2]) == 20


def test_pairs_layout(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / split / "images" / "p.png")
        palette_png(_mask()).save(tmp_path / split / "masks" / "p.png")
    (tmp_path / "classes.txt").write_text("bg\nx\ny\n")
    s = load_split(tmp_path, "val")
    assert s.names == ["p"] and s.masks[0].tolist() == _mask().tolist()


@pytest.mark.parametrize("problem", ["size", "index", "split", "missing_mask"])
def test_bad_input_names_the_file(tmp_path, problem):
    img = np.zeros((6, 8, 3), np.uint8)
    mask = _mask()
    splits = None
    if problem == "size":
        mask = np.zeros((5, 8), np.uint8)
    elif problem == "index":
        mask[4, 4] = 7  # only 3 classes (0..2) and 255 are allowed
    root = _write_voc(tmp_path / "voc", {"bad": (img, mask)}, splits=splits)
    if problem == "missing_mask":
        (root / "SegmentationClass" / "bad.png").unlink()
    split = "val" if problem == "split" else "train"
    with pytest.raises(UserError) as e:
        load_split(root, split)
    msg = str(e.value)
    expected = {"size": "bad.png", "index": "bad.png", "split": "val.txt", "missing_mask": "bad.png"}[problem]
    assert expected in msg, msg
    if problem == "index":
        assert "palette index 7" in msg
    if problem == "size":
        assert "8x5" in msg and "8x6" in msg


def test_make_shapes_deterministic_and_valid(tmp_path):
    a = make_shapes(tmp_path / "a", n_train=3, n_val=2, size=32, seed=5)
    b = make_shapes(tmp_path / "b", n_train=5, n_val=2, size=32, seed=5)  # more train images, same val
    c = make_shapes(tmp_path / "c", n_train=3, n_val=2, size=32, seed=6)
    for sub in ("JPEGImages/train_000002.jpg", "SegmentationClass/train_000002.png",
                "SegmentationClass/val_000001.png"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    first_val = "SegmentationClass/val_000000.png"
    assert (a / first_val).read_bytes() != (c / first_val).read_bytes()  # another seed, another set
    s = load_split(a, "train")
    assert s.class_names == list(SHAPE_CLASSES) and len(s) == 3
    with Image.open(a / "SegmentationClass/train_000000.png") as im:
        assert im.mode == "P"
    allm = torch.cat([m.flatten() for m in s.masks])
    assert int(allm.max()) < len(SHAPE_CLASSES) and (allm > 0).any() and (allm == 0).any()


# ----------------------------------------------------------------------------------------------- metrics

def test_miou_against_hand_computed_confusion():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 3]])
    cm = confusion_matrix(pred, target, 4)
    # rows true, columns predicted; the ignored pixel (predicted 3) counts nowhere
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    s = scores(cm)
    # IoU0 = 2/(3+3-2) = 0.5, IoU1 = 2/(2+3-2) = 2/3, IoU2 = 1/(2+1-1) = 0.5; class 3 absent: not averaged
    assert s["iou"][:3] == pytest.approx([0.5, 2 / 3, 0.5]) and np.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s["pixel_acc"] == pytest.approx(5 / 7)
    with pytest.raises(ValueError):
        confusion_matrix(pred, torch.full_like(target, 4), 4)


# ----------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("size,os_,side", [(321, 8, 41), (513, 16, 33)])
@pytest.mark.parametrize("head", ["slim", "aspp"])
def test_slim_output_shapes_meta(size, os_, side, head):
    with torch.device("meta"):
        m = seg_model("resnet_v2_101", 21, head, os_).eval()
        x = torch.empty(1, 3, size, size)
        logits, ep = m.forward_dict(x)
    assert ep["features"].shape == (1, 2048, side, side)
    assert ep["logits_lowres"].shape == (1, 21, side, side)
    assert logits.shape == (1, 21, size, size)
    assert aligned_size(size, os_) == size


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "resnet_v1_50"])
def test_every_backbone_layout_segments(name):
    os_ = 4 if name == "resnet20" else 8
    with torch.device("meta"):
        m = seg_model(name, 5, "aspp", os_)
        out = m(torch.empty(2, 3, 50, 37))  # not 32k+1: other sizes work too
    assert out.shape == (2, 5, 50, 37)


def _tiny_slim_v2(os_):
    """A slim-layout (stride in the last unit) v2 net, small enough for exact comparisons."""
    blocks = [resnet_v2_block("block1", 4, 2, 2), resnet_v2_block("block2", 8, 2, 2),
              resnet_v2_block("block3", 8, 2, 2), resnet_v2_block("block4", 8, 2, 1)]
    return ResNet(blocks, num_classes=None, global_pool=False, output_stride=os_, preact=True, root_depth=8)


@pytest.mark.parametrize("head,pool", [("slim", True), ("aspp", False)])
def test_os8_and_os16_agree_on_the_shared_grid(head, pool):
    """slim's atrous trick: os-8 features subsampled by 2 are the os-16 features (eval mode).

    The slim head is a 1x1 conv, so its logits agree too; ASPP's atrous branches agree (rates double with
    the resolution), but its image-level pooling averages a 2x denser grid, so logits differ slightly at
    os 8 vs 16; with that branch off they agree exactly.
    """
    torch.manual_seed(0)
    m16 = SegModel(_tiny_slim_v2(16), 3, head, aspp_channels=8, image_pooling=pool)
    m8 = SegModel(_tiny_slim_v2(8), 3, head, aspp_channels=8, image_pooling=pool)
    randomize_bn(m16)
    m8.load_state_dict(m16.state_dict())  # the same weights: os only changes strides and rates
    m16.eval(), m8.eval()
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        _, e16 = m16.forward_dict(x)
        _, e8 = m8.forward_dict(x)
    assert e16["features"].shape[-1] == 5 and e8["features"].shape[-1] == 9
    torch.testing.assert_close(e8["features"][..., ::2, ::2], e16["features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(e8["logits_lowres"][..., ::2, ::2], e16["logits_lowres"], atol=1e-4, rtol=1e-4)


def test_os8_and_os16_agree_for_a_registered_torchvision_layout():
    m16 = seg_model("resnet18", 3, "slim", 16)
    m8 = seg_model("resnet18", 3, "slim", 8)
    randomize_bn(m16)
    m8.load_state_dict(m16.state_dict())
    m16.eval(), m8.eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        a, b = m16.forward_dict(x)[1]["logits_lowres"], m8.forward_dict(x)[1]["logits_lowres"]
    torch.testing.assert_close(b[..., ::2, ::2], a, atol=1e-4, rtol=1e-4)


def test_upsample_logits_keeps_feature_i_on_pixel_i_times_stride():
    low = torch.randn(1, 2, 5, 4)
    aligned = upsample_logits(low, (65, 49), 16)  # 16 * 4 + 1, 16 * 3 + 1: align_corners exactly
    torch.testing.assert_close(aligned, F.interpolate(low, (65, 49), mode="bilinear", align_corners=True))
    other = upsample_logits(low, (70, 40), 16)  # taller than the grid (held), narrower (cropped)
    assert other.shape == (1, 2, 70, 40)
    torch.testing.assert_close(other[..., ::16, ::16], low[..., :, :3])
    torch.testing.assert_close(other[..., 69, 32], low[..., 4, 2])  # past the last feature: held


def test_predict_logits_pads_to_the_aligned_size():
    m = seg_model("resnet20", 3, "slim", 4).eval()
    x = torch.randn(1, 3, 30, 26)
    out = predict_logits(m, x)
    assert out.shape == (1, 3, 30, 26)
    full = m(F.pad(x, (0, 29 - 26, 0, 33 - 30)))  # 4k+1 at output stride 4
    torch.testing.assert_close(out, full[..., :30, :26])


# ----------------------------------------------------------------------------------------------- weights, BN

def test_backbone_weights_from_a_classification_file(tmp_path):
    cls = resnetkit.create_model("resnet20", num_classes=10)
    randomize_bn(cls)
    path = save_weights(cls, tmp_path / "cls.safetensors", class_names=[str(i) for i in range(10)])
    seg = seg_model("resnet20", 4, "aspp", 4, aspp_channels=8)
    assert load_backbone_weights(seg, path) == ["logits.bias", "logits.weight"]
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, cls.state_dict()[k]), k
    other = seg_model("resnet32", 4, "slim", 4)
    with pytest.raises(UserError, match="cls.safetensors"):
        load_backbone_weights(other, path)


def test_freeze_bn_keeps_backbone_statistics():
    m = seg_model("resnet20", 3, "aspp", 4, aspp_channels=8)
    m.freeze_bn = True
    m.train()
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    head_bns = [x for x in m.head.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert not any(b.training for b in bns) and all(b.training for b in head_bns)
    before = [b.running_mean.clone() for b in bns]
    m(torch.randn(2, 3, 17, 17)).sum().backward()
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bns, before))
    assert any(not torch.equal(h.running_mean, torch.zeros_like(h.running_mean)) for h in head_bns)


def test_save_and_load_a_segmentation_model(tmp_path):
    m = seg_model("resnet20", 6, "aspp", 4, aspp_channels=8, aspp_rates=[1, 2, 3])
    randomize_bn(m)
    m.eval()
    path = save_weights(m, tmp_path / "seg.safetensors", class_names=list(SHAPE_CLASSES),
                        preprocessing={"task": "segmentation", "mean": [0.5] * 3, "std": [0.25] * 3})
    back = load(path)
    assert isinstance(back, SegModel) and back.config.to_dict() == m.config.to_dict()
    assert isinstance(back.config.build(), SegModel)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))


# ----------------------------------------------------------------------------------------------- augmentation

def test_joint_augment_moves_image_and_mask_together():
    g = torch.Generator().manual_seed(0)
    aug = JointAugment(crop=41, min_scale=0.5, max_scale=1.5, flip=True)
    # 8x8 blocks of one class, so bilinear (image) and nearest (mask) resizing agree inside the blocks
    masks = [torch.randint(0, 3, (4, 5), generator=g, dtype=torch.uint8).repeat_interleave(8, 0)
             .repeat_interleave(8, 1)[:30, :37].contiguous() for _ in range(6)]
    images = [m[None].repeat(3, 1, 1) * 100 for m in masks]  # image value = 100 * class, everywhere
    params = aug.sample(6, torch.Generator().manual_seed(1))
    x, y = aug(images, masks, params, torch.zeros(3), torch.full((3,), 1 / 255))  # "normalised" = raw value
    assert x.shape == (6, 3, 41, 41) and y.shape == (6, 41, 41) and y.dtype == torch.int64
    assert (y == IGNORE).any()  # scaled-down images are padded with the ignore label
    ok = y != IGNORE
    # nearest-neighbour mask vs bilinear image: inside regions they agree; count exact matches
    agree = ((x[:, 0][ok] - 100 * y[ok]).abs() < 0.5).float().mean()
    assert agree > 0.6
    assert (x[:, 0][~ok] == 0).all()  # padding is the mean: 0 after normalisation
    # flips: redo one image with flip off and compare mirrored
    p1 = {k: v[:1] for k, v in params.items()}
    p1["flip"] = torch.tensor([1])
    p0 = dict(p1, flip=torch.tensor([0]))
    a = aug(images[:1], masks[:1], p1, torch.zeros(3), torch.ones(3))
    b = aug(images[:1], masks[:1], p0, torch.zeros(3), torch.ones(3))
    assert torch.equal(a[1], b[1].flip(-1)) and torch.equal(a[0], b[0].flip(-1))


# ----------------------------------------------------------------------------------------------- training

def test_resume_gives_the_same_weights(tmp_path):
    """Stopped in the middle of an epoch (as SIGTERM does) and resumed in a new Trainer: the same weights
    and the same metrics as the run that never stopped."""
    data = make_shapes(tmp_path / "data", n_train=8, n_val=2, size=24, seed=0)

    def cfg(out):
        # channels_last fixed: "auto" times both layouts at start-up, so on a busy machine the whole run and
        # the stopped one could choose differently, and NHWC rounds differently (seen as a 5e-4 loss gap).
        return resolve(None, ["data.crop_size=25", "data.min_scale=0.75", "data.max_scale=1.25"],
                       {"data.path": str(data), "model.backbone": "resnet20", "model.head": "slim",
                        "model.output_stride": 4, "data.batch_size": 4, "schedule.epochs": 2, "run.out": str(out),
                        "run.channels_last": False}, task="segmentation")

    class StopAfterStep3:
        def on_step(self, trainer):
            if trainer.step == 3:
                trainer.request_stop()

    whole = Trainer(cfg(tmp_path / "a")).fit()
    stopped = Trainer(cfg(tmp_path / "b"), hooks=[StopAfterStep3()]).fit()
    assert stopped["interrupted"] and stopped["step"] == 3 and not (tmp_path / "b" / "model.safetensors").exists()
    torch.manual_seed(123)  # the resumed run must not depend on the global RNG state
    resumed = Trainer(cfg(tmp_path / "b"), resume=True)
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (3, 1, 1)
    rest = resumed.fit()
    assert rest["step"] == whole["step"] == 4
    assert (rest["train_loss"], rest["val_miou"]) == (whole["train_loss"], whole["val_miou"])
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_segmentation_counts_every_labelled_pixel_of_mixed_sizes():
    g = torch.Generator().manual_seed(0)
    sizes = [(20, 31), (33, 17)]
    masks = [torch.randint(0, 3, s, generator=g, dtype=torch.uint8) for s in sizes]
    masks[1][0] = IGNORE
    images = [torch.randint(0, 256, (3, *s), generator=g, dtype=torch.uint8) for s in sizes]
    data = SegSet(images, masks, ["a", "b"], ["bg", "x", "y"])
    model = seg_model("resnet20", 3, "slim", 4)
    ev = evaluate_segmentation(model, data, (0.5,) * 3, (0.25,) * 3)
    assert int(ev["confusion"].sum()) == 20 * 31 + 33 * 17 - 17
    assert 0 <= ev["miou"] <= 1 and ev["n"] == 2


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 140), w=st.integers(1, 140), stride=st.sampled_from([8, 16]))
def test_aligned_size_puts_the_last_feature_on_the_last_pixel(h, w, stride):
    ah, aw = aligned_size(h, stride), aligned_size(w, stride)
    assert ah >= h and (ah - 1) % stride == 0 and ah - stride < h  # the smallest stride*k + 1 >= h
    with torch.device("meta"):
        m = seg_model("resnet18", 2, "slim", stride).eval()
        logits, ep = m.forward_dict(torch.empty(1, 3, ah, aw))
    # slim's arithmetic: a stride*k + 1 input gives k + 1 features, the corners on the corners
    assert ep["features"].shape[-2:] == ((ah - 1) // stride + 1, (aw - 1) // stride + 1)
    assert logits.shape[-2:] == (ah, aw)
