"""Fine-tuning (`train --init`, --freeze-stages, --head-lr-mult), AdamW, and what `--amp auto` /
channels_last "auto" resolve to, end to end through the CLI on digits and a tiny RGB folder."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

import resnetkit
from resnetkit import pretrained
from resnetkit.cli import main
from resnetkit.train import Trainer, resolve
from resnetkit.train.precision import cpu_has_bf16
from tests.conftest import randomize_bn

TINY = ["--data", "digits", "--subset", "128", "--batch-size", "64", "--set", "schedule.steps=3",
        "--set", "run.threads=1"]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """A resnet20 weights file for 1-channel inputs with 5 classes and its own normalisation."""
    torch.manual_seed(3)
    model = randomize_bn(resnetkit.create_model("resnet20", num_classes=5, in_chans=1), seed=3)
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    resnetkit.save_weights(model, path, class_names=list("abcde"),
                           preprocessing={"size": [8, 8], "mean": [0.25], "std": [0.5], "channel_order": "L"})
    return path


def _backbone(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if not k.startswith("logits.")}


def test_init_with_another_class_count_gets_a_new_head_and_the_files_normalisation(init_file, tmp_path, caplog):
    with caplog.at_level("INFO", logger="resnetkit.train"):
        assert main(["train", "--model", "resnet20", *TINY, "--init", str(init_file),
                     "--out", str(tmp_path / "r")]) == 0
    assert "new classifier for 10 classes (the file has 5)" in caplog.text
    out = resnetkit.load(tmp_path / "r" / "model.safetensors")
    assert out.num_classes == 10 and out.card.preprocessing.mean == (0.25,) and out.card.preprocessing.std == (0.5,)
    src, trained = load_file(init_file), load_file(tmp_path / "r" / "model.safetensors")
    assert any(not torch.equal(src[k], trained[k]) for k in _backbone(src))  # nothing frozen: the backbone moved
    # A resumed run takes its weights from the checkpoint and never reads the init file again.
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["init"] == str(init_file)


@pytest.mark.parametrize("same_classes", [True, False])
def test_init_with_as_many_classes_keeps_the_head_only_for_the_same_classes(tmp_path, caplog, same_classes):
    # digits' classes are "0".."9": a 10-class file of those keeps its head; of other names (a new task with
    # as many classes) it gets a new one, since its rows would score other classes.
    torch.manual_seed(4)
    model = resnetkit.create_model("resnet20", num_classes=10, in_chans=1)
    names = [str(i) for i in range(10)] if same_classes else list("abcdefghij")
    path = tmp_path / "init10.safetensors"
    resnetkit.save_weights(model, path, class_names=names)
    with caplog.at_level("INFO", logger="resnetkit.train"):
        assert main(["train", "--model", "resnet20", *TINY, "--init", str(path), "--freeze-stages", "3",
                     "--lr", "1e-6", "--out", str(tmp_path / "r")]) == 0
    assert ("are not the data's" in caplog.text) != same_classes
    src, trained = load_file(path), load_file(tmp_path / "r" / "model.safetensors")
    moved = (trained["logits.weight"] - src["logits.weight"]).abs().max().item()
    # Kept: 3 steps at lr 1e-6 leave the file's head where it was. New: re-initialised, far from it.
    assert (moved < 1e-3) == same_classes, moved


def test_freeze_all_stages_keeps_backbone_and_bn_statistics_bitwise(init_file, tmp_path):
    run = tmp_path / "probe"
    assert main(["train", "--model", "resnet20", *TINY, "--init", str(init_file), "--freeze-stages", "3",
                 "--out", str(run)]) == 0
    src, trained = load_file(init_file), load_file(run / "model.safetensors")
    assert _backbone(src).keys() == _backbone(trained).keys()
    for k, v in _backbone(src).items():  # conv weights, BN affine, running_mean/var, num_batches_tracked
        assert torch.equal(v, trained[k]), k
    assert trained["logits.weight"].shape[0] == 10


def test_freeze_more_stages_than_the_model_has_is_one_line(init_file, tmp_path, capsys):
    assert main(["train", "--model", "resnet20", *TINY, "--init", str(init_file), "--freeze-stages", "4",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--freeze-stages 4" in err and "3 stages" in err


def test_init_of_another_architecture_names_both(init_file, tmp_path, capsys):
    assert main(["train", "--model", "resnet32", *TINY, "--init", str(init_file), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resnet20" in err and "resnet32" in err and "Traceback" not in err
    assert main(["train", "--model", "resnet20", *TINY, "--init", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r2")]) == 2
    assert "neither a weights file nor a pretrained tag" in capsys.readouterr().err


def test_head_lr_mult_and_adamw(init_file, tmp_path):
    cfg = resolve(flags={"model.init": str(init_file), "optim.head_lr_mult": 10.0, "optim.name": "adamw",
                         "optim.lr": 1e-3, "data.name": "digits", "data.subset": 128, "data.batch_size": 64,
                         "schedule.steps": 3, "run.out": str(tmp_path / "r")})
    trainer = Trainer(cfg)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    head = {id(p) for p in trainer.model.logits.parameters()}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(0, torch.arange(64))
    lrs = {}
    for g in trainer.optimizer.param_groups:
        for p in g["params"]:
            lrs[id(p)] = g["lr"]
    assert {lrs[i] for i in head} == {10 * lrs[id(trainer.model.conv1.conv.weight)]} and len(head) == 2
    assert not torch.equal(before["logits.weight"], trainer.model.logits.weight)


def test_amp_and_channels_last_auto_resolve_and_are_recorded(tmp_path, caplog):
    run = tmp_path / "r"
    with caplog.at_level("INFO", logger="resnetkit.train"):
        assert main(["train", "--model", "resnet20", *TINY, "--set", "schedule.max_steps=2", "--out", str(run)]) == 0
    assert "precision: amp" in caplog.text
    saved = json.loads((run / "config.json").read_text())["run"]
    # bf16 exactly where the CPU computes it natively (whichever flags the detection reads), else fp32
    assert saved["amp"] == ("bf16" if cpu_has_bf16() else "none") and isinstance(saved["channels_last"], bool)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["run"]["amp"] == saved["amp"] and ckpt["scaler"] == {}
    # --resume goes on with the recorded choices: no new decision (and none may be asked for)
    caplog.clear()
    with caplog.at_level("INFO", logger="resnetkit.train"):
        assert main(["train", "--out", str(run), "--resume", "--set", "schedule.max_steps=0"]) == 0
    assert "precision:" not in caplog.text
    assert json.loads((run / "config.json").read_text())["run"] == saved
    # --deterministic: the plain choice, the same on every machine; and the opt-outs are taken as given
    for name, flags in (("d", ["--deterministic"]), ("o", ["--amp", "none", "--no-channels-last"])):
        assert main(["train", "--model", "resnet20", *TINY, *flags, "--out", str(tmp_path / name)]) == 0
        got = json.loads((tmp_path / name / "config.json").read_text())["run"]
        assert got["amp"] == "none" and got["channels_last"] is False


@pytest.mark.parametrize("nhwc_faster", [True, False])
def test_channels_last_probe_times_one_converted_copy_per_layout(monkeypatch, nhwc_faster):
    """The start-up probe keeps one copy of the model in each layout (converting one copy back and forth
    timed the conversion), never touches the run's model, and picks the layout whose steps were faster."""
    from resnetkit.train import precision
    from resnetkit.train.classification import ClassificationTask

    cfg = resolve(flags={"data.name": "digits", "data.subset": 64, "data.batch_size": 32, "schedule.epochs": 1,
                         "run.out": "unused"})
    data, cfg, _ = ClassificationTask.load(cfg)
    task = ClassificationTask(cfg, data, torch.device("cpu"))
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def fake_step(m, task_, x, y, amp):
        # digits have one channel (both layouts alike in memory): the layout shows on a wider convolution
        conv = next(p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1)
        nhwc = not conv.is_contiguous()
        assert conv.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert x.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        calls.append((id(m), nhwc))
        precision._timed_step_real(m, task_, x, y, amp)  # a real step still runs: shapes and dtypes hold
        return 1.0 if nhwc == nhwc_faster else 2.0

    monkeypatch.setattr(precision, "_timed_step_real", precision._timed_step, raising=False)
    monkeypatch.setattr(precision, "_timed_step", fake_step)
    faster, why = precision.measure_channels_last(model, task, 32, "none")
    assert faster is nhwc_faster and "contiguous" in why
    copies = {nhwc: {i for i, c in calls if c == nhwc} for nhwc in (False, True)}
    assert all(len(ids) == 1 for ids in copies.values()) and copies[False] != copies[True]
    assert id(model) not in copies[False] | copies[True]
    pairs = sum(c for _, c in calls) - precision.MEASURE_WARMUP
    assert precision.MIN_PAIRS <= pairs <= precision.MEASURE_PAIRS
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the run's model untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only where there is no CUDA")
def test_fp16_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "resnet20", *TINY, "--amp", "fp16", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run.amp='fp16' needs a CUDA device" in err


@pytest.fixture
def fake_tag(tmp_path, monkeypatch):
    """A catalogue entry served from a local torchvision resnet18 file, cached under tmp_path."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(num_classes=1000)
    randomize_bn(tv)
    src = tmp_path / "server" / "resnet18-xxxxxxxx.pth"
    src.parent.mkdir()
    torch.save(tv.state_dict(), src)
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    w = pretrained.PretrainedWeights("resnet18.finetune_test", src.as_uri(), "torchvision", 1000, "torchvision",
                                     70.0, 89.0, "test", sha256_prefix=prefix)
    monkeypatch.setitem(pretrained.REGISTRY, w.tag, w)
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    return w.tag, tmp_path / "cache" / "converted" / f"{w.tag}.safetensors"


def test_init_from_a_pretrained_tag_linear_probe(fake_tag, tmp_path):
    tag, converted = fake_tag
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    run = tmp_path / "r"
    assert main(["train", "--model", "resnet18", "--data", f"folder:{tmp_path / 'imgs'}", "--set", "data.image_size=16",
                 "--batch-size", "8", "--set", "schedule.steps=2", "--set", "run.threads=1", "--init", tag,
                 "--freeze-stages", "4", "--out", str(run)]) == 0
    src, trained = load_file(converted), load_file(run / "model.safetensors")
    for k, v in _backbone(src).items():
        assert torch.equal(v, trained[k]), k
    card = resnetkit.read_card(run / "model.safetensors")
    assert card.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406)) and card.class_names == ("cat", "dog")
