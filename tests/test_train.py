"""Training: weights files, schedules, weight-decay groups, budget planning, config overrides, and
end-to-end properties run as real processes: exact resume after SIGKILL / SIGTERM, and DDP = one process."""

import json
import os
import random
import re
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import resnetkit
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError, UserError
from resnetkit.train import Trainer, checkpoint, report
from resnetkit.train.config import (
    Origin,
    ScheduleConfig,
    SegmentationModelConfig,
    TrainConfig,
    check_resume,
    resolve,
)
from resnetkit.train.optim import EMA, param_groups
from resnetkit.train.schedule import BudgetPlanner, lr_at, plan_total_steps
from resnetkit.weights import Preprocessing, load, read_card, save_weights
from tests.runs import finish, start, stop_at_first_checkpoint

PRE = {"size": [8, 8], "mean": [0.3], "std": [0.37], "grayscale": True}


def small_model():
    return resnetkit.create_model("resnet20", num_classes=10, in_chans=1)


# -- weights files ---------------------------------------------------------------------------


def test_weights_roundtrip(tmp_path):
    m = small_model()
    for b in m.buffers():  # non-default buffers, so a file that dropped them could not pass
        if b.dtype.is_floating_point:
            b.uniform_(0.5, 1.5)
    path = save_weights(m, tmp_path / "w.safetensors", class_names=list("abcdefghij"), preprocessing=PRE,
                        source="unit test", extra={"note": 1})
    assert not [p for p in tmp_path.iterdir() if p.name != "w.safetensors"]  # no temp file left behind
    card = read_card(path)
    assert card.config.to_dict() == {"arch": "resnet20", "kwargs": {"num_classes": 10, "in_chans": 1}}
    assert card.source == "unit test" and card.extra == {"note": 1}
    m2 = load(path)
    assert not m2.training and m2.card == card
    assert m2.card.class_names == tuple("abcdefghij") and m2.card.preprocessing == Preprocessing.from_dict(PRE)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(m.eval()(x), m2(x))


def test_weights_bad_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"definitely not safetensors")
    with pytest.raises(UserError, match="not a safetensors file"):
        load(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="no such weights file"):
        load(tmp_path / "absent.safetensors")
    save_file({"a": torch.zeros(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(UserError, match="without resnetkit metadata"):
        load(tmp_path / "bare.safetensors")

    m = small_model()
    good = save_weights(m, tmp_path / "good.safetensors")
    meta = _raw_meta(good)
    state = load_file(good)
    edited = dict(state)
    edited[next(iter(edited))] = edited[next(iter(edited))] + 1
    save_file(edited, tmp_path / "edited.safetensors", metadata=meta)
    with pytest.raises(UserError, match="checksum"):
        load(tmp_path / "edited.safetensors")
    # Without the checksum, loading still checks every key and shape.
    meta = {k: v for k, v in meta.items() if "sha256" not in k}
    missing = dict(state)
    dropped = sorted(missing)[0]
    del missing[dropped]
    missing["extra.thing"] = torch.zeros(1)
    save_file(missing, tmp_path / "keys.safetensors", metadata=meta)
    with pytest.raises(UserError, match=rf"missing in .*: {dropped}; unused from .*: extra\.thing"):
        load(tmp_path / "keys.safetensors")
    key = next(k for k, v in state.items() if v.ndim == 4)
    shaped = dict(state)
    shaped[key] = torch.zeros(1, 1, 1, 1)
    save_file(shaped, tmp_path / "shape.safetensors", metadata=meta)
    with pytest.raises(UserError, match=f"shape mismatch .*{key}"):
        load(tmp_path / "shape.safetensors")


def _raw_meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# -- schedules, optimizer groups, budget planning --------------------------------------------


def test_step_schedule_matches_the_paper():
    # He et al. 2016 sec. 4.2: lr 0.1, divided by 10 at 32k and 48k, stop at 64k; 0.01 warm-up for ResNet-110.
    s = ScheduleConfig(name="step", milestones=(32000, 48000), warmup_steps=400, warmup="constant", warmup_lr=0.01)
    lrs = {i: lr_at(i, 64000, 0.1, s) for i in (0, 399, 400, 31999, 32000, 47999, 48000, 63999)}
    assert lrs == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01,
                                 48000: 0.001, 63999: 0.001})
    frac = ScheduleConfig(name="step")  # default milestones 0.5, 0.75 of the run
    assert lr_at(499, 1000, 0.1, frac) == pytest.approx(0.1) and lr_at(500, 1000, 0.1, frac) == pytest.approx(0.01)


def test_cosine_and_warmup():
    s = ScheduleConfig(name="cosine", warmup_steps=10)
    assert lr_at(0, 110, 0.2, s) == pytest.approx(0.02) and lr_at(9, 110, 0.2, s) == pytest.approx(0.2)
    assert lr_at(10, 110, 0.2, s) == pytest.approx(0.2)
    assert lr_at(60, 110, 0.2, s) == pytest.approx(0.1)  # half-way through the decay
    assert lr_at(110, 110, 0.2, s) == pytest.approx(0.0, abs=1e-12)
    long_warmup = ScheduleConfig(name="cosine", warmup_steps=100)  # longer than the run: clamped to a quarter
    assert lr_at(9, 40, 1.0, long_warmup) == pytest.approx(1.0) and lr_at(39, 40, 1.0, long_warmup) < 0.01
    floor = ScheduleConfig(name="cosine", final_lr_frac=0.1)
    assert lr_at(100, 100, 1.0, floor) == pytest.approx(0.1)


def test_onecycle():
    s = ScheduleConfig(name="onecycle")
    assert lr_at(0, 100, 0.4, s) == pytest.approx(0.4 / 25)
    assert lr_at(30, 100, 0.4, s) == pytest.approx(0.4)
    assert lr_at(100, 100, 0.4, s) == pytest.approx(0.4 / 25 / 1e4)
    assert max(lr_at(i, 100, 0.4, s) for i in range(100)) == pytest.approx(0.4)


def test_weight_decay_groups():
    m = small_model()
    decay, rest = param_groups(m, 5e-4, decay_norm_and_bias=False)
    convs = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Conv2d | torch.nn.Linear)]
    assert {id(p) for p in decay["params"]} == {id(p) for p in convs} and decay["weight_decay"] == 5e-4
    bn = [p for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters()]
    assert bn and {id(p) for p in bn} <= {id(p) for p in rest["params"]} and rest["weight_decay"] == 0
    assert len(decay["params"]) + len(rest["params"]) == len(list(m.parameters()))
    all_decay, none = param_groups(m, 5e-4, decay_norm_and_bias=True)
    assert len(all_decay["params"]) == len(list(m.parameters())) and not none["params"]


def test_ema_averages_weights():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.5)
    start = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    assert torch.allclose(ema.module.weight, start + 1.0)


def test_ema_keeps_averaging_after_a_state_is_loaded():
    # BatchNorm: float buffers are averaged, the integer step count copied; a loaded state (a resume) must
    # land in the tensors the next updates average.
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(m, decay=0.5)
    ema.update(m)
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    saved["0.weight"].fill_(4.0)
    ema.load_state_dict(saved)
    with torch.no_grad():
        m[0].weight.fill_(2.0)
        m[1].running_mean.fill_(6.0)
        m[1].num_batches_tracked.fill_(7)
    ema.update(m)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 3.0))
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 3.0))  # (0 + 6) / 2
    assert int(ema.module[1].num_batches_tracked) == 7


def test_plan_total_steps_arithmetic():
    # 600 s budget, 100 s spent, 0.5 s/step, 10 s per evaluation every 100 steps, 20 s reserve:
    # (600 - 100 - 20 - 10) / (0.5 + 10 / 100) = 783 more steps.
    assert plan_total_steps(600, 100, 50, 0.5, 100, 10, reserve_s=20) == 50 + 783
    assert plan_total_steps(10, 100, 50, 0.5, 100, 10) == 51  # over budget already: stop next step


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("slowdown", [1.0, 1.5])
def test_budget_planner_fits_the_whole_schedule(slowdown):
    clock = FakeClock()
    clock.t = 5.0  # set-up before training
    budget, step_s, eval_s, spe = 120.0, 0.05, 2.0, 200
    planner = BudgetPlanner(budget, spe, start_time=0.0, clock=clock, skip=3, probe=10, reserve_s=1.0)
    total, step = 10**9, 0
    while step < total:
        # The first steps are slow (allocation, compilation); after 40 s the machine gets slower.
        clock.t += 0.5 if step < 3 else step_s * (slowdown if clock.t > 40 else 1.0)
        step += 1
        total = planner.after_step(step, total)
        if step % spe == 0 or step == total:
            clock.t += eval_s
            total = planner.after_eval(step, total, eval_s)
    if slowdown == 1.0:
        assert planner.step_s == pytest.approx(step_s)
    assert budget - 3.0 <= clock.t <= budget  # the schedule ends inside the budget and uses nearly all of it
    assert total == step


# -- config -----------------------------------------------------------------------------------


def test_config_overrides_file_and_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[optim]\nlr = 0.3\nnesterov = true\n[schedule]\nname = "step"\nmilestones = [100, 150]\n')
    cfg = resolve(str(f), ["optim.lr=0.2", "data.pad=null", "run.amp=bf16"], {"schedule.epochs": 3})
    assert cfg.optim.lr == 0.2 and cfg.optim.nesterov is True and cfg.schedule.milestones == (100.0, 150.0)
    assert cfg.data.pad is None and cfg.run.amp == "bf16" and cfg.schedule.epochs == 3.0
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # Every error is a ConfigError that names the key, never a command-line flag.
    for bad, msg in [("optim.lrr=1", "unknown key optim.lrr"), ("nope.x=1", "unknown section"),
                     ("optim.lr=fast", "optim.lr='fast' is not a valid number"), ("lr=1", "SECTION.KEY=VALUE"),
                     ("schedule.name=linear", "schedule.name='linear': choose step, cosine or onecycle"),
                     ("run.amp=fp8", "run.amp='fp8': choose auto, none, bf16 or fp16"),
                     ("optim.grad_accum=3", "data.batch_size=128 must be a positive multiple of optim.grad_accum=3"),
                     ("data.path=x", "unknown key data.path for task classification")]:
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            resolve(None, [bad], {"schedule.epochs": 1})
        assert "--" not in str(e.value)
    with pytest.raises(ConfigError, match="say how long"):
        resolve(None, [], {})


def test_the_word_none_in_an_override_is_a_value_where_none_is_a_choice():
    cfg = resolve(None, ["run.amp=none", "data.auto_augment=none", "data.eval_tta=none", "data.data_dir=none"],
                  {"schedule.epochs": 1})
    assert (cfg.run.amp, cfg.data.auto_augment, cfg.data.eval_tta, cfg.data.data_dir) == ("none", "none", "none", None)
    with pytest.raises(ConfigError, match="model.arch=None is not a valid string"):
        resolve(None, ["model.arch=none"], {"schedule.epochs": 1})


def test_config_errors_carry_the_key_and_where_it_came_from(tmp_path):
    """The library names keys and config files; the origin travels with the error so the CLI can name the
    flag, the --set or the --config file instead."""
    f = tmp_path / "c.json"
    f.write_text('{"optim": {"lr": NaN}}')
    with pytest.raises(ConfigError) as e:
        resolve(str(f), [], {"schedule.epochs": 1})
    assert str(e.value) == f"config file {f}: optim.lr=nan: must be a finite number > 0"
    assert e.value.keys == ("optim.lr",) and e.value.origins == (Origin("file", str(f)),)
    with pytest.raises(ConfigError) as e:  # the last source that set a key is the one named
        resolve(str(f), ["optim.lr=Infinity"], {"optim.lr": 0.1, "schedule.epochs": 1})
    assert e.value.origins == (Origin("override", "optim.lr=Infinity"),) and "optim.lr=inf" in e.value.detail
    with pytest.raises(ConfigError) as e:
        resolve(None, [], {"data.batch_size": 100, "optim.grad_accum": 3, "schedule.epochs": 1})
    assert e.value.keys == ("data.batch_size", "optim.grad_accum") and len(e.value.origins) == 2
    with pytest.raises(ConfigError, match=r"unknown key optim\.momentun .*did you mean optim\.momentum"):
        resolve(None, ["optim.momentun=0.5"], {"schedule.epochs": 1})


def test_resume_may_change_only_where_and_how_it_runs():
    saved = resolve(None, [], {"schedule.steps": 10, "run.out": "a"})
    moved = resolve(None, ["run.threads=3", "run.log_every=5", "data.data_dir=/data", "schedule.max_steps=4"],
                    {"run.out": "b", "optim.lr": 0.1}, base=saved)  # repeating a saved value is fine
    assert (moved.run.out, moved.run.threads, moved.schedule.max_steps) == ("b", 3, 4)
    check_resume(saved, moved)
    with pytest.raises(ConfigError, match=r"optim\.lr cannot change on resume.*\(optim\.lr=0\.1\)") as e:
        resolve(None, ["optim.lr=0.2"], base=saved)
    assert e.value.keys == ("optim.lr",) and "--" not in str(e.value)


def test_metrics_appends_are_whole_lines_and_a_torn_one_is_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    assert report.append_metrics(path, {"epoch": 1, "loss": 0.5}) == 0
    size = report.append_metrics(path, {"epoch": 2, "loss": float("nan")})
    assert size == len(path.read_bytes().splitlines(keepends=True)[0])  # the size before, to undo an append
    path.write_bytes(path.read_bytes() + b'{"epoch": 3, "lo')  # a crash in the middle of a write
    rows = report.read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 2] and "torn last line" in caplog.text
    report.truncate_metrics(path, 1)
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n'
    path.write_text('{"epoch": 1}\ngarbage\n{"epoch": 2}\n')
    with pytest.raises(UserError, match="line 2 is not a metrics row"):
        report.read_metrics(path)


def test_segmentation_config_and_task_in_files(tmp_path):
    f = tmp_path / "seg.json"
    f.write_text(json.dumps({"task": "segmentation", "data": {"path": "somewhere", "crop_size": 65}}))
    cfg = resolve(str(f), ["model.head=aspp"], {"schedule.steps": 5})
    assert cfg.task == "segmentation" and isinstance(cfg.model, SegmentationModelConfig)
    # optim.lr None: chosen from the data when the run starts (resnetkit.train.seg_defaults)
    assert (cfg.data.crop_size, cfg.model.head, cfg.optim.lr, cfg.run.out) == (65, "aspp", None, "runs/segment")
    # config.json / the checkpoint hold the task, so a resumed run is rebuilt as what it was.
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="data.path is required"):
        resolve(None, [], {"schedule.steps": 5}, task="segmentation")
    with pytest.raises(ConfigError, match="model.head='fpn': choose slim, aspp or deeplabv3plus"):
        resolve(None, ["model.head=fpn"], {"schedule.steps": 5, "data.path": "x"}, task="segmentation")
    with pytest.raises(ConfigError, match="task='classification'"):
        resolve(str(f), [], {"schedule.steps": 5}, task="classification")  # a file of another task
    with pytest.raises(ConfigError, match="task='detection'"):
        TrainConfig.for_task("detection")


class Recorder:
    """A hook: the steps it saw, and one key added to every metrics row."""

    def __init__(self):
        self.steps = []

    def on_step(self, trainer):
        self.steps.append(trainer.step)

    def on_epoch_end(self, trainer, row):
        return {**row, "seen_steps": len(self.steps)}


def test_hooks_max_steps_holdout_and_eval_subset(tmp_path, one_thread):
    # 1437 digits: the last 137 are held out for evaluation (the first 50 of them used), 128 of the rest
    # train in batches of 32: 4 steps per epoch, a 2-epoch schedule of 8 steps stopped after 6.
    cfg = resolve(None, ["data.holdout=137", "data.eval_subset=50", "schedule.max_steps=6"],
                  {"data.name": "digits", "data.subset": 128, "data.batch_size": 32, "schedule.epochs": 2,
                   "schedule.name": "step", "run.out": str(tmp_path / "run")})
    hook = Recorder()
    trainer = Trainer(cfg, hooks=[hook])
    digits, _ = load_dataset("digits")
    assert torch.equal(trainer.task.eval_set.images, digits.images[-137:][:50])  # the held-out tail, not the test
    assert torch.equal(trainer.task.train_set.images, digits.images[:128])
    result = trainer.fit()
    assert hook.steps == [1, 2, 3, 4, 5, 6] and result["step"] == 6 and trainer.total == 8
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["seen_steps"]) for r in rows] == [(1, 4, 4), (2, 6, 6)]
    # Steps 4 and 5 follow the 8-step schedule (lr / 10 from its half-way point), not a 6-step one.
    assert rows[-1]["lr"] == pytest.approx(lr_at(5, 8, cfg.optim.lr, cfg.schedule)) == pytest.approx(0.01)
    assert rows[-1]["test_err"] * 50 == pytest.approx(round(rows[-1]["test_err"] * 50))  # 50 evaluation images


def test_final_evaluation_adds_flip_tta_when_training_flips(tmp_path, one_thread):
    from resnetkit.cli import main as cli
    from resnetkit.train import evaluate_file

    def train(out, *sets):
        argv = ["train", "--model", "resnet20", "--data", "digits", "--batch-size", "32", "--epochs", "2", "--amp",
                "none", "--no-channels-last", "--set", "data.subset=128", "--out", str(out)]
        assert cli(argv + [f for kv in sets for f in ("--set", kv)]) == 0
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    rows = train(tmp_path / "flip", "data.flip=true")  # eval_tta=auto: training flips, so the final eval adds TTA
    assert "test_err_flip" not in rows[0] and 0 <= rows[-1]["test_err_flip"] <= 1
    assert read_card(tmp_path / "flip" / "model.safetensors").metrics["test_top1_err_flip_tta"] == rows[-1][
        "test_err_flip"]
    # The same figure as `resnetkit eval --tta flip` on the same (test) images.
    ev = evaluate_file(tmp_path / "flip" / "model.safetensors", "digits", tta="flip")
    assert ev["top1"] == pytest.approx(1 - rows[-1]["test_err_flip"], abs=1e-9)
    assert "test_err_flip" not in train(tmp_path / "plain")[-1]  # digits do not flip: no mirror at eval either
    assert "test_err_flip" not in train(tmp_path / "off", "data.flip=true", "data.eval_tta=none")[-1]


@pytest.mark.parametrize("epochs, pad", [(2, 0), (10, 1)])
def test_an_unset_pad_is_off_for_short_runs(tmp_path, one_thread, epochs, pad):
    flags = {"data.name": "digits", "data.subset": 64, "data.batch_size": 32, "schedule.epochs": epochs}
    t = Trainer(resolve(None, [], {**flags, "run.out": str(tmp_path / "auto")}))
    assert t.task.source.aug.pad == pad and t.task.state_dict()["auto_pad"] == pad  # digits' own pad is 1
    assert Trainer(resolve(None, ["data.pad=1"], {**flags, "run.out": str(tmp_path / "set")})).task.source.aug.pad == 1


def test_a_budgeted_run_decides_the_pad_from_its_plan(tmp_path, one_thread, caplog):
    from resnetkit.cli import main as cli
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="resnetkit.train"):
        assert cli(["train", "--model", "resnet20", "--data", "digits", "--budget-min", "0.1", "--batch-size", "32",
                    "--out", str(out)]) == 0
    assert "data.pad = 0 (auto:" in caplog.text  # a few epochs in 6 s: short
    assert torch.load(out / "checkpoint.pt", weights_only=True)["task"]["auto_pad"] == 0


def test_rng_state_survives_weights_only_load(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.atomic_torch_save({"rng": state}, tmp_path / "c.pt")
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    checkpoint.set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


# -- whole runs in real processes ---------------------------------------------------------------

TRAIN = [sys.executable, "-m", "resnetkit", "train", "--model", "resnet20", "--data", "digits", "--batch-size", "32",
         "--lr", "0.05", "--seed", "1", "--deterministic", "--set", "run.threads=1"]


def same_weights(a, b) -> bool:
    sa, sb = load_file(a), load_file(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def losses(run_dir):
    return [(r["epoch"], r["step"], r["train_loss"], r["test_loss"])
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_exact_resume_after_sigkill_and_sigterm(tmp_path):
    args = TRAIN + ["--epochs", "3", "--subset", "320"]  # 10 steps per epoch
    resume = [sys.executable, "-m", "resnetkit", "train", "--resume", "--out"]
    full, killed, term = (start(args + ["--out", name], tmp_path) for name in ("full", "killed", "term"))
    # SIGKILL after the first checkpoint; SIGTERM likewise, which makes a checkpoint in the middle of an epoch.
    (rc, _), (rc_term, err) = stop_at_first_checkpoint((killed, tmp_path / "killed", signal.SIGKILL),
                                                       (term, tmp_path / "term", signal.SIGTERM))
    assert rc == -signal.SIGKILL and not (tmp_path / "killed" / "model.safetensors").exists()
    assert 1 <= torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] < 3
    assert rc_term == 143 and "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert torch.load(tmp_path / "term" / "checkpoint.pt", weights_only=True)["step"] < 3 * 10
    finish(full, start(resume + ["killed"], tmp_path), start(resume + ["term"], tmp_path))
    for name in ("killed", "term"):  # the identical result
        assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / name / "model.safetensors")
        assert losses(tmp_path / "full") == losses(tmp_path / name)


def test_ddp_two_processes_match_one(tmp_path):
    args = TRAIN[3:] + ["--epochs", "2", "--subset", "320"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                 "-m", "resnetkit", *args, "--out", "ddp"], tmp_path, env)
    # One process with the same global batch of 32 split into the same two halves of 16.
    one = start(TRAIN + ["--epochs", "2", "--subset", "320", "--set", "optim.grad_accum=2", "--out", "one"], tmp_path)
    assert "cpu x2" in finish(ddp, one)[0]
    ddp, one = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    names = {n for n, _ in small_model().named_parameters()}
    # BN running statistics are per process under DDP (rank 0's are saved), so compare the parameters.
    for n in names:
        assert torch.allclose(ddp[n], one[n], rtol=1e-5, atol=1e-6), n
    init = small_model()  # seed 1 is the runs' seed, but the weights must have moved from any start
    assert not torch.equal(ddp[sorted(names)[0]], init.state_dict()[sorted(names)[0]])
