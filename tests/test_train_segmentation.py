"""Segmentation through the one training loop, as `resnetkit train --task segmentation` runs it on a tiny
shapes set: DDP with two gloo processes equals one process with the same global batch, exact resume after
SIGKILL and SIGTERM, and bf16 autocast + channels_last + torch.compile + gradient accumulation in one run."""

import json
import os
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from resnetkit.cli import main
from resnetkit.weights import load
from tests.conftest import seg_model
from tests.runs import finish, start, stop_at_first_checkpoint
from tests.test_train import same_weights

# model_best.safetensors: segmentation evaluates on its val split, so run.keep_best=auto keeps the best mIoU
EXPECTED_FILES = {".resnetkit-run", "checkpoint.pt", "config.json", "learning_curve.png", "metrics.jsonl",
                  "model.safetensors", "model_best.safetensors"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    assert main(["data", "make-shapes", str(root), "--n-train", "8", "--n-val", "2", "--size", "24"]) == 0
    return root


def seg_args(shapes):
    """8 training images in global batches of 4: two steps per epoch."""
    return ["train", "--task", "segmentation", "--data", str(shapes), "--model", "resnet20", "--head", "slim",
            "--output-stride", "4", "--crop-size", "25", "--batch-size", "4", "--lr", "0.05", "--seed", "1",
            "--deterministic", "--set", "run.threads=1"]


def rows(run_dir):
    """The metrics rows without the timings, which differ between any two runs."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("img_s", "time_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_ddp_two_processes_match_one(shapes, tmp_path):
    args = seg_args(shapes)[1:] + ["--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                 "-m", "resnetkit", "train", *args, "--out", "ddp"], tmp_path, env)
    # One process with the same global batch of 4 split into the same two halves of 2.
    one = start([sys.executable, "-m", "resnetkit", *seg_args(shapes), "--epochs", "2", "--set",
                 "optim.grad_accum=2", "--out", "one"], tmp_path)
    assert "cpu x2" in finish(ddp, one)[0]
    # Only rank 0 writes: one metrics row per epoch, no second copy of anything.
    assert set(os.listdir(tmp_path / "ddp")) == EXPECTED_FILES
    assert [x["epoch"] for x in rows(tmp_path / "ddp")] == [1, 2]
    ddp, one = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    names = {n for n, _ in seg_model("resnet20", 6, "slim", 4).named_parameters()}
    # BN running statistics are per process under DDP (rank 0's are saved), so compare the parameters.
    for n in names:
        assert torch.allclose(ddp[n], one[n], rtol=1e-5, atol=1e-6), n
    first = sorted(names)[0]
    assert not torch.equal(ddp[first], seg_model("resnet20", 6, "slim", 4).state_dict()[first])  # it trained
    # The training sums are over both processes: the epoch rows agree with the one-process run's.
    for a, b in zip(rows(tmp_path / "ddp"), rows(tmp_path / "one")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_pixel_acc"] == pytest.approx(b["train_pixel_acc"], abs=1e-3)


def test_exact_resume_after_sigkill_and_sigterm(shapes, tmp_path):
    args = [sys.executable, "-m", "resnetkit", *seg_args(shapes), "--epochs", "6"]  # 12 steps
    resume = [sys.executable, "-m", "resnetkit", "train", "--resume", "--out"]
    full, killed, term = (start(args + ["--out", name], tmp_path) for name in ("full", "killed", "term"))
    (rc, _), (rc_term, err) = stop_at_first_checkpoint((killed, tmp_path / "killed", signal.SIGKILL),
                                                       (term, tmp_path / "term", signal.SIGTERM))
    assert rc == -signal.SIGKILL and not (tmp_path / "killed" / "model.safetensors").exists()
    assert 1 <= torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] < 6
    assert rc_term == 143 and "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert torch.load(tmp_path / "term" / "checkpoint.pt", weights_only=True)["step"] < 12
    # The task comes from the checkpoint, not from a flag.
    finish(full, start(resume + ["killed"], tmp_path), start(resume + ["term"], tmp_path))
    for name in ("killed", "term"):
        assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / name / "model.safetensors")
        assert rows(tmp_path / "full") == rows(tmp_path / name)


def test_bf16_channels_last_compile_and_accumulation(shapes, tmp_path, monkeypatch, capsys):
    seen, compiled = [], []
    real_compile = torch.compile

    def fake_compile(module, **kw):
        """Record what the trained model receives; the eager backend (inductor takes ~45 s on 2 cores)."""
        compiled.append(type(module).__name__)
        module.register_forward_pre_hook(lambda m, a: seen.append(
            (m.training, a[0].shape[0], a[0].is_contiguous(memory_format=torch.channels_last),
             torch.is_autocast_enabled("cpu"))) if m.training else None)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "run"
    try:
        rc = main(seg_args(shapes) + ["--amp", "bf16", "--channels-last", "--compile", "--set", "optim.grad_accum=2",
                                      "--set", "schedule.steps=3", "--out", str(out)])
    finally:
        torch._dynamo.reset()
    assert rc == 0
    assert compiled == ["SegModel"]
    # 3 steps x 2 micro-batches of 2 images, each NHWC and under autocast.
    assert seen == [(True, 2, True, True)] * 6
    last = rows(out)[-1]
    assert last["step"] == 3 and 0 <= last["val_miou"] <= 1 and torch.isfinite(torch.tensor(last["train_loss"]))
    assert load(out / "model.safetensors").card.metrics["val_miou"] == last["val_miou"]
    capsys.readouterr()
    # The aspp head's image pooling cannot train on one image per micro-batch: a one-line error naming the keys.
    rc = main(seg_args(shapes) + ["--head", "aspp", "--set", "optim.grad_accum=4", "--set", "schedule.steps=1",
                                  "--out", str(tmp_path / "aspp")])
    err = capsys.readouterr().err
    assert rc == 2 and "model.head='aspp'" in err and "optim.grad_accum" in err and len(err.strip().splitlines()) == 1
