"""Keeping the best epoch and stopping early (run.keep_best, run.early_stop) through the CLI and the Python API,
with their state in the checkpoint: a run killed and resumed keeps the same best file and stops at the same
step as one that never stopped; and gradient clipping (optim.clip_grad_norm)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from resnetkit.cli import main
from resnetkit.train import Trainer, resolve
from resnetkit.weights import read_card
from tests.hostile import StopAt

pytestmark = pytest.mark.usefixtures("one_thread")
# digits with the last 300 training images as the validation split; lr high enough that the error wobbles
FLAGS = ["--data", "digits", "--model", "resnet20", "--batch-size", "64", "--lr", "0.4", "--amp", "none",
         "--no-channels-last", "--threads", "1", "--set", "data.holdout=300", "--set", "data.subset=512"]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_keep_best_and_early_stop_through_the_cli(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *FLAGS, "--epochs", "12", "--set", "run.early_stop=2", "--out", str(run)]) == 0
    rows = _rows(run)
    errs = [r["test_err"] for r in rows]
    best = min(range(len(errs)), key=lambda i: (errs[i], i))  # the first of equal minima is kept
    card = read_card(run / "model_best.safetensors")
    assert card.extra["best"] == {"metric": "test_err", "value": errs[best], "epoch": rows[best]["epoch"],
                                  "step": rows[best]["step"]}
    assert card.metrics["test_top1_err"] == errs[best]
    # stopped after two evaluations without improvement, or ran to the end
    assert len(rows) == 12 or (len(rows) == best + 3 and all(e >= errs[best] for e in errs[best + 1:]))
    assert (run / "model.safetensors").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["run"]["keep_best"] == "test_err"  # auto, resolved: a validation split (data.holdout)


def test_keep_best_auto_is_off_on_the_test_split_and_early_stop_says_why(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "model_best.safetensors").exists()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["run"]["keep_best"] == "none"
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--epochs", "1", "--set", "run.early_stop=2", "--out",
                 str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set run.early_stop=2" in err and "data.holdout" in err
    assert main(["train", *FLAGS, "--epochs", "1", "--set", "run.keep_best=test_acc", "--out",
                 str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run.keep_best=test_acc" in err and "test_err" in err and len(err.splitlines()) == 1



def test_a_resumed_run_keeps_the_same_best_and_stops_at_the_same_step(tmp_path):
    def cfg(out):
        return resolve(None, ["data.holdout=300", "data.subset=512", "run.early_stop=1", "optim.clip_grad_norm=1.0"],
                       {"data.name": "digits", "model.arch": "resnet20", "data.batch_size": 64, "optim.lr": 0.4,
                        "schedule.epochs": 10, "run.amp": "none", "run.channels_last": False, "run.threads": 1,
                        "run.out": str(out)})
    whole = Trainer(cfg(tmp_path / "a")).fit()
    cut = Trainer(cfg(tmp_path / "b"), hooks=[StopAt(11)]).fit()  # mid-epoch 3 (7 steps per epoch)
    assert cut["interrupted"]
    rest = Trainer(cfg(tmp_path / "b"), resume=True).fit()
    assert rest["step"] == whole["step"] and _rows(tmp_path / "a") == [
        {**r, "time_s": a["time_s"], "img_s": a["img_s"]} for r, a in zip(_rows(tmp_path / "b"), _rows(tmp_path / "a"))]
    for name in ("model_best.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(tmp_path / "a" / "model_best.safetensors").extra["best"] == \
        read_card(tmp_path / "b" / "model_best.safetensors").extra["best"]
    if whole["step"] < 70:  # it stopped early: resuming it again says so
        assert main(["train", "--out", str(tmp_path / "a"), "--resume"]) == 2


def test_selection_rule():
    """Lower is better for *_err / *_loss, higher for the rest; ties and NaN are no improvement."""
    from resnetkit.train.selection import Selection

    s = Selection("test_err", patience=2)
    seen = [s.update({"epoch": e, "step": 10 * e, "test_err": v}) for e, v in
            enumerate([0.5, 0.4, 0.4, float("nan")], 1)]
    assert seen == [True, True, False, False] and (s.best, s.best_epoch, s.since, s.stopped) == (0.4, 2, 2, True)
    m = Selection("val_miou")
    assert [m.update({"epoch": e, "step": e, "val_miou": v}) for e, v in enumerate([0.1, 0.3, 0.2], 1)] == \
        [True, True, False] and m.best == 0.3 and not m.stopped


def test_class_weights_auto_and_from_a_file(tmp_path, capsys):
    """--class-weights auto: N / (K n_k) over the training labels, in the loss and in the checkpoint's task
    state; a file gives them as they are; a wrong file is one line."""
    from resnetkit.train import prepare

    cfg = resolve(flags={"data.name": "digits", "data.subset": 300, "schedule.steps": 1, "data.batch_size": 32,
                         "data.class_weights": "auto", "run.out": str(tmp_path / "w"), "run.amp": "none",
                         "run.channels_last": False})
    task = prepare(cfg).task
    counts = torch.bincount(task.train_set.labels, minlength=10).double()
    assert torch.allclose(task.class_weights.double(), 300 / (10 * counts), rtol=1e-6)
    assert (task.class_weights * counts.float()).sum() == pytest.approx(300, rel=1e-5)  # mean 1 per image
    assert task.state_dict()["class_weights"] == task.class_weights.tolist()
    f = tmp_path / "w.json"
    f.write_text(json.dumps([1.0] * 9 + [5.0]))
    task = prepare(resolve(flags={**{k: v for k, v in [("data.name", "digits"), ("schedule.steps", 1)]},
                                  "data.class_weights": str(f), "run.out": str(tmp_path / "f")})).task
    assert task.class_weights.tolist() == [1.0] * 9 + [5.0]
    f.write_text("[1, 2]")
    assert main(["train", "--data", "digits", "--epochs", "1", "--class-weights", str(f), "--out",
                 str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--class-weights {f}" in err and "10 positive numbers" in err and len(err.splitlines()) == 1
    assert main(["train", *FLAGS, "--epochs", "1", "--class-weights", "auto", "--keep-best", "test_loss",
                 "--out", str(tmp_path / "h")]) == 0
    assert read_card(tmp_path / "h" / "model_best.safetensors").extra["best"]["metric"] == "test_loss"


def test_ema_warms_up_from_the_model_not_the_initialisation():
    """optim.ema_warmup (default on): decay min(d, 1 - (1+t)^(-2/3)), 0 at the first update, so the average
    starts at the trained weights; off: the plain decay from the start."""
    from resnetkit.train.optim import EMA

    m = torch.nn.Linear(3, 2)
    ema = EMA(m, 0.999, warmup=True)
    assert ema.decay_at(0) == 0 and ema.decay_at(10) == pytest.approx(1 - 11 ** (-2 / 3))
    assert ema.decay_at(10**7) == 0.999
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m, step=0)
    assert torch.equal(ema.module.weight, m.weight)
    plain = EMA(torch.nn.Linear(3, 2), 0.999)
    assert plain.decay_at(0) == 0.999
    assert resolve(flags={"schedule.steps": 1}).optim.ema_warmup is True


def test_the_step_log_and_its_curve_survive_a_resume(tmp_path):
    """steps.jsonl gets a row every run.log_every steps, written with each commit or checkpoint (never a step the
    checkpoint does not hold); a resumed run cuts it back to its checkpoint and goes on, so the steps are
    each logged once; the learning curve draws them."""
    def cfg(out):
        return resolve(None, ["run.log_every=2"], {"data.name": "digits", "model.arch": "resnet20",
                                                   "data.subset": 256, "data.batch_size": 32, "schedule.epochs": 2,
                                                   "run.amp": "none", "run.channels_last": False,
                                                   "run.out": str(out)})
    Trainer(cfg(tmp_path / "b"), hooks=[StopAt(5)]).fit()  # mid-epoch 1; the rows of steps 2 and 4 are written
    steps = [json.loads(x) for x in (tmp_path / "b" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4]
    Trainer(cfg(tmp_path / "b"), resume=True).fit()
    steps = [json.loads(x) for x in (tmp_path / "b" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(2, 17, 2))
    assert steps[3]["epoch"] == 1.0 and all(s["train_loss"] > 0 and s["lr"] >= 0 for s in steps)
    assert (tmp_path / "b" / "learning_curve.png").stat().st_size > 10_000


def test_lr_find_through_the_cli(tmp_path, capsys):
    """train --lr-find DIR: the range test on the run's own model and data; a plot, the figures and a suggestion,
    no run folder; a second time into the same folder is refused (no overwriting)."""
    out = tmp_path / "lrf"
    argv = ["train", "--data", "digits", "--model", "resnet20", "--batch-size", "64", "--epochs", "1", "--threads",
            "1", "--out", str(tmp_path / "run"), "--lr-find", str(out)]
    assert main(argv) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    found = json.loads((out / "lr_find.json").read_text())
    lrs = found["lr"]
    assert lrs[0] == pytest.approx(1e-6) and all(b > a for a, b in zip(lrs, lrs[1:])) and 10 <= found["steps"] <= 100
    assert found["suggestion"] in lrs and found["min_loss_lr"] in lrs
    assert min(found["loss"]) < found["loss"][0]  # the loss fell somewhere along the way
    assert (out / "lr_find.png").stat().st_size > 10_000 and not (tmp_path / "run").exists()
    assert main(argv) == 2 and "lr_find" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet_v2_50", "resnext50_32x4d", "deeplabv3_resnet20"])
def test_grad_checkpointing_gives_the_same_gradients(name, monkeypatch):
    """set_grad_checkpointing on every family (one ResNet class; segmentation through its backbone): the
    same loss and gradients, with the units' activations recomputed in the backward pass."""
    import resnetkit

    torch.manual_seed(0)
    seg = name.startswith("deeplab")
    m = resnetkit.create_model(name, num_classes=3, **({} if seg else {}))
    size = 33 if seg else (32 if name == "resnet20" else 64)
    x = torch.randn(2, 3, size, size)
    grads = []
    for on in (False, True):
        m.zero_grad()
        m.set_grad_checkpointing(on)
        state = {k: v.clone() for k, v in m.state_dict().items()}  # BN statistics as they were
        out = m.train()(x)
        out.float().square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
        m.load_state_dict(state)
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda f, *a, **k: (calls.append(f), real(f, *a, **k))[1])
    m(x)
    assert len(calls) == sum(len(units) for units in (m.backbone if seg else m).blocks)  # every residual unit


def test_keep_best_auto_knows_a_validation_folder(tmp_path):
    from resnetkit.train.selection import keep_best_metric

    (tmp_path / "f" / "train").mkdir(parents=True)
    (tmp_path / "f" / "val").mkdir()
    (tmp_path / "g").mkdir()
    assert keep_best_metric(resolve(flags={"data.name": f"folder:{tmp_path / 'f'}", "schedule.steps": 1}))[0] == \
        "test_err"
    assert keep_best_metric(resolve(flags={"data.name": f"folder:{tmp_path / 'g'}", "schedule.steps": 1}))[0] == "none"
    assert keep_best_metric(resolve(flags={"data.name": "imagenet:/x", "schedule.steps": 1}))[0] == "test_err"
