"""Streamed image data (resnetkit.data.stream, imagenet, shards, sources) end to end: the same batches as the
in-memory path, exact resume after SIGKILL with DataLoader workers, two gloo processes = one, the ILSVRC-2012
layout with 1000 and 1001 classes, `data pack` round trips, and unreadable inputs."""

import dataclasses
import io
import json
import logging
import os
import signal
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from safetensors.torch import load_file

import resnetkit
from resnetkit.cli import main
from resnetkit.data import StreamOptions, load_classification, with_background
from resnetkit.data.imagenet import synsets
from resnetkit.data.loader import epoch_batches
from resnetkit.data.shards import expand, load_shards, samples
from resnetkit.data.stream import EvalTransform, TrainTransform, list_folder
from resnetkit.errors import DataError, MissingFileError
from resnetkit.train import Trainer, evaluate_file
from resnetkit.train.classification import ClassificationTask, InMemoryBatches, StreamedBatches
from resnetkit.train.config import resolve
from resnetkit.weights import save_weights
from tests.hostile import StopAt
from tests.runs import finish, start, stop_at_first_checkpoint

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--amp", "none", "--no-channels-last", "--threads", "1", "--seed", "3"]


def make_folder(root: Path, n: int, classes=("a", "b"), size=(20, 20), suffix=".png", seed=0) -> Path:
    """n images per class, each class with its own colour cast (so a net can learn them)."""
    rs = np.random.RandomState(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rs.rand(size[1], size[0], 3) * 160).astype(np.uint8)
            a[..., k % 3] += 90
            Image.fromarray(a).save(root / c / f"{i:03d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return root


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "imgs"
    make_folder(root / "train", 24, suffix=".jpg", size=(28, 20))
    make_folder(root / "val", 4, suffix=".jpg", size=(20, 28), seed=1)
    return root


# -- the same batches as the in-memory path --------------------------------------------------------------


def test_streamed_batches_equal_in_memory_batches(tmp_path, one_thread):
    """'The same': with the crop covering the whole image (crop_min_scale=1 on square images of the crop's
    size) and flips off, both paths give bit-identical normalised micro-batches and labels for the same
    seed, step by step, because both follow loader.epoch_batches; only how the pixels are read differs."""
    make_folder(tmp_path / "imgs", 12, size=(16, 16))
    flags = {"data.name": f"folder:{tmp_path / 'imgs'}", "data.image_size": 16, "data.train_crop": 16,
             "data.crop_min_scale": 1.0, "data.flip": False, "data.pad": 0, "data.batch_size": 8,
             "data.workers": 0, "model.arch": "resnet20", "run.seed": 5, "schedule.steps": 2}
    memory = _task(resolve(flags={**flags, "data.stream": "off"}))
    streamed = _task(resolve(flags={**flags, "data.stream": "on"}))
    assert isinstance(memory.source, InMemoryBatches) and isinstance(streamed.source, StreamedBatches)
    streamed.set_normalization(memory.train_set.mean, memory.train_set.std)
    streamed.begin_epoch(1, 0, resnetkit.train.distributed.Dist())
    for _, idx in epoch_batches(len(memory.train_set), 8, 5, 1):
        xm, ym = memory.batch(idx, memory.sample(8, torch.Generator().manual_seed(0)))
        xs, ys = streamed.batch(idx, streamed.sample(8, torch.Generator().manual_seed(0)))
        assert torch.equal(ym, ys) and torch.equal(xm, xs)


def test_train_crop_draws_depend_on_the_image_not_the_worker_count(split_folder):
    """Each image's crop comes from (seed, epoch, batch, index): 0 and 2 workers decode identical batches."""
    opts = StreamOptions(stream="on", train_crop=16)
    train, _ = load_classification(f"folder:{split_folder}", options=opts)
    one = [b["x"] for b in train.train_batches(7, 0, 0, 8, 0, 1, 2)]
    two = [b["x"] for b in dataclasses.replace(train, workers=2).train_batches(7, 0, 0, 8, 0, 1, 2)]
    later = [b["x"] for b in train.train_batches(7, 0, 3, 8, 0, 1, 2)]  # resumed at batch 3
    assert len(one) == 2 * (48 // 8) and all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(a, b) for a, b in zip(one[6:], later))
    assert not torch.equal(one[0][0], one[0][1])


def test_draft_decodes_a_large_jpeg_close_to_the_full_decode(tmp_path):
    a = np.kron(np.random.RandomState(0).rand(30, 40, 3), np.ones((40, 40, 1))) * 255  # smooth, 1200x1600
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    fast, full = EvalTransform(224, 256, draft=True), EvalTransform(224, 256, draft=False)
    xf, xs = fast(str(tmp_path / "big.jpg")), full(str(tmp_path / "big.jpg"))
    assert xf.shape == xs.shape == (3, 224, 224)
    assert (xf.float() - xs.float()).abs().mean() < 4  # DCT-domain downscaling: close, not equal


# -- training end to end ---------------------------------------------------------------------------------


def _train_args(data: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resnetkit", "train", "--model", "resnet20", "--data", data, "--stream", "on",
            "--set", "data.train_crop=16", "--set", "data.eval_crop=16", "--batch-size", "8", "--epochs", "2",
            "--subset", "24",
            "--out", out, *FAST, *extra]


def test_exact_resume_after_sigkill_with_workers(split_folder, tmp_path):
    args = _train_args(f"folder:{split_folder}", "full", "--workers", "2", "--deterministic")
    full = start(args, tmp_path, SUBPROCESS_ENV)
    killed = start(args[:args.index("full")] + ["killed"] + args[args.index("full") + 1:], tmp_path, SUBPROCESS_ENV)
    stop_at_first_checkpoint((killed, tmp_path / "killed", signal.SIGKILL))
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = start([sys.executable, "-m", "resnetkit", "train", "--out", "killed", "--resume", "--workers", "1"],
                    tmp_path, SUBPROCESS_ENV)
    assert "streamed at 16 px (data.stream=on)" in finish(full, resumed)[0]
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" /
                                                                                   "model.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_mid_epoch_resume_of_shards_is_exact(split_folder, tmp_path, monkeypatch, one_thread):
    """Shards resume exactly with the same process and worker counts (see resnetkit.data.shards)."""
    main(["data", "pack", str(split_folder), str(tmp_path / "sh"), "--shard-size", "6K"])
    n = len(list((tmp_path / "sh").glob("train-*.tar")))
    monkeypatch.chdir(tmp_path)
    flags = {"model.arch": "resnet20", "data.name": f"shards:sh/train-{{000000..{n - 1:06d}}}.tar",
             "data.train_crop": 16, "data.eval_crop": 16, "data.batch_size": 8, "data.workers": 2,
             "schedule.epochs": 1, "run.amp": "none", "run.channels_last": False, "run.deterministic": True,
             "run.seed": 3}
    Trainer(resolve(flags={**flags, "run.out": "full"})).fit()
    assert Trainer(resolve(flags={**flags, "run.out": "cut"}), hooks=[StopAt(3)]).fit()["interrupted"]
    Trainer(resolve(flags={**flags, "run.out": "cut"}), resume=True).fit()
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_two_gloo_processes_over_a_folder_equal_one(split_folder, tmp_path):
    # One epoch: under torch.distributed each rank spawns (not forks) its workers, each importing torch anew,
    # for every epoch's train and eval loaders; epoch boundaries under DDP are test_train's (in memory).
    one_epoch = ["--workers", "1", "--set", "data.flip=false", "--epochs", "1"]
    args = _train_args(f"folder:{split_folder}", "ddp", *one_epoch)[3:]
    ddp = start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                 "-m", "resnetkit", *args], tmp_path, SUBPROCESS_ENV)
    one = start(_train_args(f"folder:{split_folder}", "one", *one_epoch, "--set", "optim.grad_accum=2"), tmp_path,
                SUBPROCESS_ENV)
    assert "cpu x2" in finish(ddp, one)[0]
    ddp, single = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    params = {n for n, _ in resnetkit.create_model("resnet20", num_classes=2).named_parameters()}
    for name in params:  # BN statistics are per process under DDP (rank 0's are saved): compare parameters
        assert torch.allclose(ddp[name], single[name], rtol=1e-4, atol=1e-5), name


# -- ILSVRC-2012 layout ----------------------------------------------------------------------------------


def make_imagenet(root: Path, ground_truth: str = "csv") -> Path:
    wnids = synsets()[:2] + synsets()[-1:]  # tench, goldfish, toilet tissue: class indices 0, 1, 999
    for k, w in enumerate(wnids):
        make_folder(root / "train", 2, classes=(w,), size=(24, 18), suffix=".JPEG", seed=k)
    (root / "val").mkdir()
    labels = [0, 2, 1, 2]
    for i, k in enumerate(labels):
        Image.new("RGB", (18, 24), (30 * k, 90, 160)).save(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    if ground_truth == "csv":
        rows = [f"ILSVRC2012_val_{i + 1:08d},{wnids[k]} 1 2 3 4" for i, k in enumerate(labels)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif ground_truth in ("devkit", "meta.mat"):
        # ILSVRC2012_IDs number the synsets in the devkit's own (not sorted) order: use a reversed one.
        order = list(reversed(synsets()))
        (root / "devkit" / "data").mkdir(parents=True)
        if ground_truth == "meta.mat":  # the devkit's struct array, with a non-leaf synset (ID > 1000) after
            rows = np.array([(i + 1, w) for i, w in enumerate(order + ["n00001740"])],
                            dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
            scipy.io.savemat(root / "devkit" / "data" / "meta.mat", {"synsets": rows})
        else:
            (root / "devkit" / "data" / "ILSVRC2012_synsets.txt").write_text("\n".join(order) + "\n")
        ids = [order.index(wnids[k]) + 1 for k in labels]
        (root / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)))
    return root


@pytest.mark.parametrize("truth", ["csv", "devkit", "meta.mat"])
def test_imagenet_layout_labels(tmp_path, truth):
    train, val = load_classification(f"imagenet:{make_imagenet(tmp_path / 'in', truth)}")
    assert train.num_classes == 1000 and train.class_names[:2] == ["tench", "goldfish"]
    assert train.labels.tolist() == [0, 0, 1, 1, 999, 999]
    assert val.labels.tolist() == [0, 999, 1, 999]
    bg = with_background(val)
    assert bg.num_classes == 1001 and bg.class_names[0] == "background" and bg.labels.tolist() == [1, 1000, 2, 1000]


def test_imagenet_eval_with_1000_and_1001_classes(tmp_path):
    root = make_imagenet(tmp_path / "in")
    pre = {"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "resize": 18, "crop": 16}
    for k in (1000, 1001):
        torch.manual_seed(0)
        model = resnetkit.create_model("resnet20", num_classes=k)
        names = resnetkit.weights.imagenet_class_names(k)
        save_weights(model, tmp_path / f"w{k}.safetensors", class_names=names, preprocessing=pre)
        result = evaluate_file(tmp_path / f"w{k}.safetensors", f"imagenet:{root}", batch_size=3)
        assert result["n"] == 4 and len(result["class_names"]) == k
        cm = np.array(result["confusion_matrix"])
        assert cm.sum(1)[[0, 1, 999] if k == 1000 else [1, 2, 1000]].tolist() == [1, 1, 2]


def test_cli_eval_streams_a_folder_with_the_cards_crop(split_folder, tmp_path, capsys, caplog):
    pre = {"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "resize": 18, "crop": 16}
    save_weights(resnetkit.create_model("resnet20", num_classes=2), tmp_path / "w.safetensors", class_names=["a", "b"],
                 preprocessing=pre)
    with caplog.at_level(logging.INFO):
        assert main(["eval", "--weights", str(tmp_path / "w.safetensors"), "--data", f"folder:{split_folder}",
                     "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["n"] == 8
    assert "streamed at 16 px" in caplog.text


def test_imagenet_training_with_a_1001_class_model(tmp_path, one_thread):
    root = make_imagenet(tmp_path / "in")
    cfg = resolve(flags={"data.name": f"imagenet:{root}", "model.arch": "resnet20", "data.batch_size": 2,
                         "model.kwargs": {"num_classes": 1001}, "data.workers": 0, "data.train_crop": 16,
                         "schedule.steps": 1})
    task = _task(cfg)
    assert task.train_set.num_classes == 1001 and sorted(set(task.train_set.labels.tolist())) == [1, 2, 1000]
    assert task.build_model().logits.out_channels == 1001


# -- shards ----------------------------------------------------------------------------------------------


def test_pack_round_trip(split_folder, tmp_path, capsys):
    assert main(["data", "pack", str(split_folder), str(tmp_path / "sh"), "--shard-size", "10K"]) == 0
    out = capsys.readouterr().out
    assert "train: 48 images in" in out and "val: 8 images in" in out
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert index["classes"] == ["a", "b"] and sum(n for _, n in index["splits"]["train"]) == 48
    got = {}
    for name, _ in index["splits"]["train"]:
        for key, image, label, suffix in samples(str(tmp_path / "sh" / name)):
            assert suffix == ".jpg" and key not in got
            got[key] = (image, int(label))
    src = list_folder(split_folder / "train")
    want = sorted((Path(src.path(i)).read_bytes(), int(src.labels[i])) for i in range(len(src)))
    assert sorted(got.values()) == want  # every image's bytes and label, once
    # a second pack into the same folder is refused, with --overwrite it is allowed
    assert main(["data", "pack", str(split_folder), str(tmp_path / "sh")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "pack", str(split_folder), str(tmp_path / "sh"), "--overwrite", "--shard-size", "10K"]) == 0


def test_shard_readers_split_the_shards(split_folder, tmp_path):
    """Ranks and workers read disjoint shards; the epoch sees each sample at most once when they divide."""
    main(["data", "pack", str(split_folder), str(tmp_path / "sh"), "--shard-size", "3K"])
    n = len(list((tmp_path / "sh").glob("train-*.tar")))
    assert expand("x-{000..002}-{a,b}.tar") == ["x-000-a.tar", "x-000-b.tar", "x-001-a.tar", "x-001-b.tar",
                                                 "x-002-a.tar", "x-002-b.tar"]
    train, val = load_shards(str(tmp_path / "sh" / f"train-{{000000..{n - 1:06d}}}.tar"), None,
                             TrainTransform(16), EvalTransform(16, 18), workers=2)
    assert len(train) == 48 and len(val) == 8
    seen = []
    for rank in (0, 1):
        for b in train.train_batches(1, 0, 0, 8, rank, 2, 1):
            seen += b["x"].flatten(1).sum(1).tolist()
    assert len(seen) == 48 // 8 * 8
    ev = [y for part in (0, 1) for _, y in val.eval_batches(part, 2, 3)]
    assert sorted(torch.cat(ev).tolist()) == [0] * 4 + [1] * 4


# -- bad input -------------------------------------------------------------------------------------------


def test_unreadable_images_are_replaced_and_named_or_refused_when_strict(tmp_path, caplog):
    root = tmp_path / "imgs"
    make_folder(root / "val", 1, size=(16, 16))
    make_folder(root / "train", 8, size=(16, 16))
    (root / "train" / "c").mkdir()  # a class folder with only unreadable images
    (root / "train" / "c" / "zero.jpg").write_bytes(b"")
    good = (root / "train" / "a" / "000.png").read_bytes()
    (root / "train" / "c" / "truncated.png").write_bytes(good[: len(good) // 2])
    opts = StreamOptions(stream="on", train_crop=16, workers=0)
    train, _ = load_classification(f"folder:{root}", options=opts)
    with caplog.at_level(logging.WARNING):
        batches = list(train.train_batches(0, 0, 0, 6, 0, 1, 1))  # 3 batches: every image
    assert [len(b["y"]) for b in batches] == [6, 6, 6]
    assert "zero.jpg: unreadable image" in caplog.text and "truncated.png: unreadable image" in caplog.text
    strict, _ = load_classification(f"folder:{root}", options=dataclasses.replace(opts, strict=True))
    with pytest.raises(DataError, match=r"(zero\.jpg|truncated\.png): unreadable image.*strict=False"):
        list(strict.train_batches(0, 0, 0, 18, 0, 1, 1))


def test_cmyk_and_16_bit_images_decode(tmp_path):
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(tmp_path / "deep.png")
    red = TrainTransform(16, flip=False)(str(tmp_path / "cmyk.jpg"), 0)
    grey = EvalTransform(16, 18)(str(tmp_path / "deep.png"))
    assert red.shape == grey.shape == (3, 16, 16)
    assert red[0].float().mean() > 200 and red[1].float().mean() < 60
    assert abs(grey.float().mean() - 40000 / 65535 * 255) < 2


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="bomb.png: refused as a decompression bomb"):
        EvalTransform(16, 18)(str(tmp_path / "bomb.png"))


def test_imagenet_without_ground_truth_says_what_to_add(tmp_path):
    root = make_imagenet(tmp_path / "in")
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(MissingFileError, match="ground truth was not found: put LOC_val_solution.csv"):
        load_classification(f"imagenet:{root}")


def test_shards_with_a_missing_cls(tmp_path, caplog):
    make_folder(tmp_path / "imgs" / "train", 4, size=(16, 16))
    make_folder(tmp_path / "imgs" / "val", 2, size=(16, 16))
    main(["data", "pack", str(tmp_path / "imgs"), str(tmp_path / "sh")])
    with tarfile.open(tmp_path / "sh" / "train-000000.tar") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    first = members[0][0].name.split(".")[0]
    with tarfile.open(tmp_path / "sh" / "train-000000.tar", "w") as t:
        for m, data in members:
            if m.name != f"{first}.cls":  # the first sample keeps its image and loses its label
                t.addfile(m, io.BytesIO(data))
    train, _ = load_shards(str(tmp_path / "sh" / "train-000000.tar"), None, TrainTransform(16), EvalTransform(16, 18),
                           workers=0)
    with caplog.at_level(logging.WARNING):
        assert sum(len(b["y"]) for b in train.train_batches(0, 0, 0, 4, 0, 1, 1)) == 8
    assert "has no" in caplog.text
    strict, _ = load_shards(str(tmp_path / "sh" / "train-000000.tar"), None, TrainTransform(16),
                            EvalTransform(16, 18), workers=0, strict=True)
    with pytest.raises(DataError, match="has no"):
        list(strict.train_batches(0, 0, 0, 4, 0, 1, 1))


def test_auto_choice_is_logged_and_val_path_works_in_memory_too(split_folder, caplog):
    opts = StreamOptions(val_path=str(split_folder / "val"))
    with caplog.at_level(logging.INFO):
        train, val = load_classification(f"folder:{split_folder / 'train'}",
                                         options=dataclasses.replace(opts, image_size=12))
    assert isinstance(train, resnetkit.data.ImageSet) and len(train) == 48 and len(val) == 8
    assert "held in memory at 12 px (data.stream=auto" in caplog.text
    augmented = dataclasses.replace(opts, auto_augment="trivialaugment", random_erase=0.5, train_crop=16)
    with caplog.at_level(logging.INFO):
        train, _ = load_classification(f"folder:{split_folder / 'train'}", options=augmented)
    assert not isinstance(train, resnetkit.data.ImageSet)
    assert "auto_augment / random_erase work on streamed data" in caplog.text
    x = next(iter(train.train_batches(0, 0, 0, 4, 0, 1, 1)))["x"]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8


def test_mixup_and_cutmix_give_soft_targets_independent_of_the_split(one_thread):
    mix = resnetkit.data.MixAugment(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=3)
    p = mix.sample(8, torch.Generator().manual_seed(0))
    x, y = torch.randn(8, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    whole_x, whole_y = mix.apply(x, y, p)
    halves = [mix.apply(x[i:i + 4], y[i:i + 4], {k: v[i:i + 4] for k, v in p.items()}) for i in (0, 4)]
    assert torch.equal(whole_x, torch.cat([h[0] for h in halves]))
    assert torch.equal(whole_y, torch.cat([h[1] for h in halves]))
    assert torch.allclose(whole_y.sum(1), torch.ones(8)) and (whole_y.max(1).values < 1).any()


def test_mixup_cutmix_train_through_the_cli(tmp_path, one_thread):
    args = ["train", "--model", "resnet20", "--data", "digits", "--batch-size", "32", "--set", "schedule.steps=2",
            "--set", "data.mixup_alpha=0.2", "--set", "data.cutmix_alpha=1.0", "--amp", "none", "--no-channels-last",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"]) and 0 <= row["train_err"] <= 1
    assert main([*args[:-1], str(tmp_path / "odd"), "--batch-size", "33"]) == 2  # pairs need an even micro-batch


def test_fewer_shards_than_readers_split_by_sample(split_folder, tmp_path):
    main(["data", "pack", str(split_folder), str(tmp_path / "sh")])  # one train shard
    train, _ = load_shards(str(tmp_path / "sh" / "train-000000.tar"), None, TrainTransform(16, flip=False),
                           EvalTransform(16, 18), workers=0)
    train = dataclasses.replace(train, train_transform=TrainTransform(16, flip=False, scale=(1.0, 1.0)))
    per_rank = [torch.cat([b["x"] for b in train.train_batches(1, 0, 0, 8, rank, 2, 1)]) for rank in (0, 1)]
    keys = [{tuple(x.flatten()[:64].tolist()) for x in xs} for xs in per_rank]
    assert len(keys[0]) == len(keys[1]) == 24 and not keys[0] & keys[1]  # each rank half the samples, no overlap


def _task(cfg) -> ClassificationTask:
    """The classification task of `cfg` on the CPU, its data loaded (what resnetkit.train.prepare builds)."""
    data, cfg, _ = ClassificationTask.load(cfg)
    return ClassificationTask(cfg, data, torch.device("cpu"))
