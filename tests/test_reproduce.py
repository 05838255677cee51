"""The reproduce commands: the papers' CIFAR recipes, and both experiments end to end on tiny data."""

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.reproduce import degradation, runner
from resnetkit.reproduce.cifar import RECIPES, cifar_config, paper_error
from resnetkit.train.schedule import lr_at

# Typed from the papers, apart from the code under test: He et al. 2016a Table 6, 2016b Tables 3/4.
PAPER_ERR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
             "resnet1202": 7.93, "preact_resnet110": 6.37, "preact_resnet164": 5.46, "preact_resnet1001": 4.92}
WARMED_UP = {"resnet110", "resnet1202", "preact_resnet110", "preact_resnet164", "preact_resnet1001"}


@pytest.fixture(autouse=True)
def _restore_threads():
    """--threads 1 sets torch's global thread count; give the other test files theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_every_paper_net_has_a_recipe():
    assert set(RECIPES) == set(PAPER_ERR)


@pytest.mark.parametrize("arch", sorted(PAPER_ERR))
def test_cifar_recipe_matches_the_paper(arch):
    cfg = cifar_config(arch)
    assert cfg.model.arch == arch
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.pad, cfg.data.flip, cfg.data.cutout) == ("cifar10", 128, 4,
                                                                                                  True, 0)
    o, s = cfg.optim, cfg.schedule
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (0.1, 0.9, 1e-4, False)
    assert (s.name, s.steps, tuple(s.milestones), s.gamma) == ("step", 64_000, (32_000, 48_000), 0.1)
    assert paper_error(arch) == PAPER_ERR[arch]
    warm = 0.01 if arch in WARMED_UP else 0.1
    expected = {0: warm, 399: warm, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001,
                63_999: 0.001}
    got = {k: lr_at(k, s.steps, o.lr, s) for k in expected}
    assert got == pytest.approx(expected)


def test_max_steps_keeps_the_full_schedules_learning_rates(tmp_path):
    """The trainer shortens warm-up for a short run; a run cut short by schedule.max_steps must not."""
    cfg = cifar_config("resnet110", data="digits", out=str(tmp_path / "run"), threads=1, eval_subset=50, max_steps=3)
    # resnet20 on 128 digits: one step per epoch, small and fast.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch="resnet20"),
                              data=dataclasses.replace(cfg.data, subset=128))
    result, history = runner.run(cfg, train_probe=64)
    assert result["step"] == 3 and cfg.schedule.steps == 64_000
    assert [r["lr"] for r in history] == [0.01] * 3  # still in the 400-step warm-up at 0.01
    assert all(r["train_eval_err"] * 64 == pytest.approx(round(r["train_eval_err"] * 64)) for r in history)
    assert runner.read_history(tmp_path / "run") == json.loads(json.dumps(history))


def test_preact1001_batch_64():
    assert cifar_config("preact_resnet1001", batch_size=64).data.batch_size == 64
    assert paper_error("preact_resnet1001", 64) == 4.62  # the authors' released code, batch 64
    assert paper_error("resnet56", 64) == 6.97  # no batch-64 figure: the paper's own


def test_cifar_dry_run_prints_config_and_paper_error(capsys):
    assert main(["reproduce", "cifar", "--model", "resnet110", "--dry-run", "--val-split"]) == 0
    out = capsys.readouterr().out
    cfg = json.loads(out[:out.rindex("}") + 1])
    assert cfg["schedule"]["warmup_steps"] == 400 and cfg["schedule"]["steps"] == 64_000
    assert "holdout: 5000; stop after: 64000" in out and "6.43%" in out


def write_tiny_cifar(root, per_batch=32, n_test=40):
    """CIFAR-10 python batches (protocol-2 pickles of dicts), as the real archive holds them."""
    rng = np.random.RandomState(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        d = {"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), "labels": rng.randint(0, 10, n).tolist()}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))


def test_cifar_runs_a_few_iterations(tmp_path, capsys):
    data, out = tmp_path / "cifar", tmp_path / "run"
    data.mkdir()
    write_tiny_cifar(data)  # 160 training images: one step of 128 per epoch
    rc = main(["reproduce", "cifar", "--model", "resnet20", "--data-dir", str(data), "--max-steps", "2",
               "--val-split", "32", "--threads", "1", "--out", str(out)])
    assert rc == 0
    assert "8.75%" in capsys.readouterr().out
    r = json.loads((out / "reproduce.json").read_text())
    assert (r["arch"], r["paper_err_pct"], r["paper_steps"], r["step"]) == ("resnet20", 8.75, 64_000, 2)
    assert r["config"]["schedule"]["milestones"] == [32_000, 48_000]
    assert len(r["history"]) == 2  # 128 training images left after the split: one step per epoch
    assert (r["final"]["test_err"] * 32) == pytest.approx(round(r["final"]["test_err"] * 32))  # 32 val images
    assert "not comparable" in (out / "reproduce.md").read_text()
    # The run folder is not reused by a new run; --resume continues it, and only where it stops may change.
    assert main(args := ["reproduce", "cifar", "--model", "resnet20", "--data-dir", str(data), "--val-split", "32",
                         "--threads", "1", "--out", str(out)]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert main([*args, "--resume", "--seed", "3", "--max-steps", "3"]) == 2
    assert "run.seed cannot change on resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--max-steps", "3"]) == 0
    r = json.loads((out / "reproduce.json").read_text())
    assert r["step"] == 3 and [h["step"] for h in r["history"]] == [1, 2, 3]


def test_degradation_end_to_end_and_reuse(tmp_path, capsys):
    out = tmp_path / "deg"
    args = ["reproduce", "degradation", "--data", "digits", "--depths", "20,32", "--epochs", "2", "--subset", "256",
            "--batch-size", "64", "--test-subset", "100", "--train-probe", "64", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    png, md, js = (out / f"degradation.{k}" for k in ("png", "md", "json"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads(js.read_text())
    assert [x["arch"] for x in r["runs"]] == ["plain20", "plain32", "resnet20", "resnet32"]
    for run in r["runs"]:
        assert [h["epoch"] for h in run["history"]] == [1, 2]
        assert {"train_err", "train_eval_err", "test_err"} <= set(run["final"])
        assert run["final"]["train_eval_err"] * 64 == pytest.approx(round(run["final"]["train_eval_err"] * 64))
    assert r["runs"][0]["params"] < r["runs"][1]["params"]
    metrics = ("train_err", "train_eval_err", "train_err (mean of last 2 epochs)",
               "train_eval_err (mean of last 2 epochs)")
    assert {(c["kind"], c["metric"]) for c in r["checks"]} == {(k, m) for k in ("plain", "resnet") for m in metrics}
    assert {"cpu", "cores", "torch"} <= set(r["machine"]) and r["wall_s"] > 0 and r["recipe"]["epochs"] == 2
    # Augmenting means the dataset's crops (digits: 1 px), even in a run too short for the trainer's own default.
    assert r["recipe"]["pad"] == 1 and json.loads((out / "runs" / "plain20" / "config.json").read_text())["data"][
        "pad"] == 1
    text = md.read_text()
    assert "| resnet32 | 32 |" in text and "degradation.png" in text and "digits" in text
    # A second call finds the four finished runs with the same config and does not train again.
    assert main(args) == 0
    assert all(x["reused"] for x in json.loads(js.read_text())["runs"])
    # --render rewrites the report from the JSON alone, with a new note.
    md.unlink()
    assert main(["reproduce", "degradation", "--render", str(js), "--out", str(out), "--note", "re-rendered"]) == 0
    assert "re-rendered" in md.read_text() and [x["history"] for x in json.loads(js.read_text())["runs"]] == [
        x["history"] for x in r["runs"]]
    # A different recipe must not silently reuse (or overwrite) those runs.
    assert main([*args[:7], "3", *args[8:]]) == 2
    assert "holds another" in capsys.readouterr().err


def test_plan_epochs_arithmetic(monkeypatch):
    from resnetkit.data import load_dataset

    monkeypatch.setattr(degradation, "_step_seconds", lambda *a, **k: 0.01)
    train, test = load_dataset("digits")
    recipe = degradation.Recipe(data="digits", subset=640, batch_size=64, eval_subset=192, train_probe=96)
    # Per epoch and net: 10 steps + (192 + 96) / 64 / 3 = 1.5 step-equivalents of evaluation -> 0.115 s;
    # 5 s per run are reserved for loading and saving.
    epochs, _ = degradation.plan_epochs(recipe, ["plain20", "resnet20"], 0.23 * 7.5 + 10, train, test)
    assert epochs == 7
    assert degradation.plan_epochs(recipe, ["plain20"], 0.0, train, test)[0] == 1  # never zero


def test_checks_compare_the_final_errors():
    def run(kind, depth, err):
        return {"kind": kind, "depth": depth, "final": {"train_err": err}}

    out = degradation.checks([run("plain", 20, 0.10), run("plain", 56, 0.15), run("resnet", 20, 0.10),
                              run("resnet", 56, 0.12)])
    assert [(c["kind"], c["expected"], c["holds"]) for c in out] == [("plain", "higher", True),
                                                                    ("resnet", "lower", False)]


def test_depths_are_checked(capsys):
    with pytest.raises(UserError):
        degradation.parse_depths("20,abc")
    assert degradation.parse_depths("56,20,56") == (20, 56)
    assert main(["reproduce", "degradation", "--data", "digits", "--depths", "20,21", "--epochs", "1"]) == 2
    assert "6n+2" in capsys.readouterr().err


def test_degradation_with_seeds_reports_mean_and_spread(tmp_path, capsys):
    out = tmp_path / "deg"
    args = ["reproduce", "degradation", "--data", "digits", "--depths", "20,32", "--epochs", "1", "--subset", "128",
            "--batch-size", "64", "--test-subset", "64", "--train-probe", "64", "--threads", "1", "--seeds", "3,5",
            "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "degradation.json").read_text())
    assert r["seeds"] == [3, 5] and [(x["arch"], x["seed"]) for x in r["runs"]] == [
        (a, s) for s in (3, 5) for a in ("plain20", "plain32", "resnet20", "resnet32")]
    assert all((out / "runs" / f"seed{s}" / a / "model.safetensors").is_file() for s in (3, 5) for a in ("plain20",))
    # The seeds really differ, and the summary is their mean and sample standard deviation.
    by = {(x["arch"], x["seed"]): x["final"]["train_err"] for x in r["runs"]}
    st = next(s for s in r["summary"] if s["arch"] == "resnet20")["stats"]["train_err"]
    a, b = by["resnet20", 3], by["resnet20", 5]
    assert st["mean"] == pytest.approx((a + b) / 2) and st["sd"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    assert all(c["seeds"] == 2 and c["clear"] in (True, False) for c in r["checks"])
    text = (out / "degradation.md").read_text()
    assert "once per seed (3, 5)" in text and " ± " in text and "seeds 3, 5" in text
    assert "seed noise" in capsys.readouterr().out
    # Rerunning reuses every seed's runs; a bad list is one line.
    assert main(args) == 0 and all(x["reused"] for x in json.loads((out / "degradation.json").read_text())["runs"])
    assert "which reused 8 of the 8 runs from earlier ones" in (out / "degradation.md").read_text()
    assert main([*args[:-4], "--seeds", "0,x", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "seeds '0,x'" in err and "comma-separated integers" in err and "Traceback" not in err


def test_checks_with_seeds_say_whether_the_gap_clears_the_noise():
    def run(kind, depth, err, seed):
        return {"kind": kind, "depth": depth, "seed": seed, "final": {"train_err": err}}

    runs = [run("plain", 20, e, s) for s, e in enumerate((0.10, 0.11, 0.12))]
    runs += [run("plain", 56, e, s) for s, e in enumerate((0.20, 0.21, 0.22))]  # gap 10 points, sd 1: clear
    runs += [run("resnet", 20, e, s) for s, e in enumerate((0.10, 0.12, 0.14))]
    runs += [run("resnet", 56, e, s) for s, e in enumerate((0.09, 0.11, 0.13))]  # gap 1 point, sd 2: noise
    out = {c["kind"]: c for c in degradation.checks(runs)}
    assert out["plain"]["holds"] and out["plain"]["clear"] is True and out["plain"]["seeds"] == 3
    assert out["resnet"]["holds"] and out["resnet"]["clear"] is False
    assert out["resnet"]["deep_sd"] == pytest.approx(0.02)


def test_render_reads_a_report_of_an_earlier_version(tmp_path, capsys):
    """The single-seed report of an earlier resnetkit (fewer machine fields), kept in docs/results."""
    committed = Path(__file__).resolve().parent.parent / "docs" / "results" / "degradation_seed0_augmented.json"
    out = tmp_path / "r"
    assert main(["reproduce", "degradation", "--render", str(committed), "--out", str(out)]) == 0
    text = (out / "degradation.md").read_text()
    assert "| resnet56 | 56 |" in text and "torch 2.14.1" in text
    assert "\n- machine: AMD EPYC, 2 usable cores, threads=1, load average 2.38" in text
    assert "clear of seed noise" not in text and "within seed noise**" not in text  # one seed: no such claim
    assert "resnet56" in capsys.readouterr().out


def test_degradation_without_augmentation(tmp_path):
    out = tmp_path / "deg"
    assert main(["reproduce", "degradation", "--data", "digits", "--depths", "20,32", "--epochs", "1", "--subset", "64",
                 "--batch-size", "32", "--test-subset", "32", "--train-probe", "32", "--threads", "1", "--no-augment",
                 "--out", str(out)]) == 0
    r = json.loads((out / "degradation.json").read_text())
    assert r["recipe"]["augment"] is False and "augmented" not in r["train_err_definitions"]["train_err"]
    for arch in ("plain20", "resnet32"):  # every net trained on the images as they are
        data = json.loads((out / "runs" / arch / "config.json").read_text())["data"]
        assert (data["pad"], data["flip"]) == (0, False)
    assert "this run trains without augmentation" in (out / "degradation.md").read_text()
