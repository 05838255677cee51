"""`resnetkit train` -> `eval` -> `predict` end to end on digits, and one-line errors for bad input."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resnetkit.cli import main
from resnetkit.data import load_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--model", "resnet20", "--data", "digits", "--epochs", "2", "--batch-size", "64",
               "--subset", "640", "--lr", "0.05", "--out", str(out), "--set", "optim.ema_decay=0.9",
               "--amp", "none"])  # fp32, as `eval` runs: test_eval compares the numbers exactly
    assert rc == 0
    return out


def test_train_writes_the_run(run_dir):
    for name in ("model.safetensors", "metrics.jsonl", "learning_curve.png", "checkpoint.pt", "config.json"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "step", "train_loss", "train_err", "test_loss", "test_err", "lr", "time_s"} <= rows[0].keys()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["data"]["name"] == "digits" and cfg["optim"]["ema_decay"] == 0.9


def test_eval(run_dir, tmp_path, capsys):
    assert main(["eval", "--weights", str(run_dir / "model.safetensors"), "--data", "digits",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert result["n"] == 359 and 0 <= result["top1"] <= result["top5"] <= 1
    assert len(result["per_class_accuracy"]) == 10 and np.array(result["confusion_matrix"]).sum() == 359
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["top1"] == pytest.approx(1 - last["test_err"])  # the same numbers as training reported
    # where it fails: per class, the most confident mistakes, calibration
    assert "macro-F1" in out and "ECE" in out and "precision" in out
    assert set(result["per_class"]) == set(result["class_names"])
    assert sum(r["support"] for r in result["per_class"].values()) == 359
    worst = result["worst"]
    assert worst and all(w["true"] != w["predicted"] for w in worst)
    assert [w["confidence"] for w in worst] == sorted((w["confidence"] for w in worst), reverse=True)
    assert sum(b["n"] for b in result["calibration_bins"]) == 359 and 0 <= result["ece"] <= 1
    for name in ("reliability.png", "worst.png"):
        assert (tmp_path / name).stat().st_size > 5000


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    _, test = load_dataset("digits")
    for i in range(3):
        Image.fromarray(test.images[i, 0].numpy()).resize((32, 32)).save(folder / f"digit{i}.png")
    return folder


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_predict(run_dir, images, capsys, fmt):
    assert main(["predict", str(images), "--weights", str(run_dir / "model.safetensors"), "--top-k", "2",
                 "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert len(rows) == 3 and len(rows[0]["predictions"]) == 2
        assert rows[0]["predictions"][0]["class"] in [str(i) for i in range(10)]
        assert rows[0]["predictions"][0]["prob"] >= rows[0]["predictions"][1]["prob"]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert len(rows) == 6 and rows[0].keys() == {"image", "rank", "class", "index", "prob"}
    else:
        assert len(out.strip().splitlines()) == 3 and "digit0.png" in out and "%" in out


def test_predict_folder_to_jsonl_agrees_with_printed_predictions(run_dir, images, tmp_path, capsys):
    weights = str(run_dir / "model.safetensors")
    assert main(["predict", str(images), "--weights", weights, "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(images), "--weights", weights, "--out", str(out), "--workers", "0"]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out
    streamed = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(printed[0]["predictions"]) == 5  # the default --top-k
    assert [r["predictions"][0]["class"] for r in streamed] == [r["predictions"][0]["class"] for r in printed]


@pytest.mark.parametrize("argv,msg", [
    (["train", "--data", "imagenet21k", "--epochs", "1"], "unknown dataset"),
    (["train", "--data", "mnist", "--data-dir", "/nonexistent/dir", "--epochs", "1"], "no such directory"),
    (["train", "--data", "digits", "--epochs", "1", "--set", "optim.lrr=1"], "unknown key optim.lrr"),
    (["train", "--data", "digits", "--model", "resnet21", "--epochs", "1"], "unknown model"),
    (["train", "--data", "digits"], "say how long"),
    (["train", "--data", "digits", "--epochs", "1", "--head", "aspp"],
     "--head aspp: model.head is a setting of task segmentation"),
    (["train", "--data", "digits", "--epochs", "1", "--amp", "bf16", "--set", "run.amp=fp8"], "run.amp='fp8'"),
    (["train", "--task", "segmentation", "--epochs", "1"], "data.path is required"),
    (["predict", "nothing.png", "--weights", "nothing.safetensors"], "no such weights file"),
])
def test_bad_input_is_one_line_exit_2(argv, msg, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnetkit: error:") and msg in err


def test_bad_input_subprocess_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "resnetkit", "train", "--data", "nope", "--epochs", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_non_finite_loss_stops_with_a_message(tmp_path, capsys):
    rc = main(["train", "--data", "digits", "--epochs", "2", "--subset", "320", "--batch-size", "32", "--lr", "1e30",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "loss became nan" in err and "lower optim.lr" in err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_dry_run_prints_the_automatic_choices_and_why(tmp_path, capsys):
    """--dry-run prepares the run as training would (data read, precision decided) and prints every automatic
    value resolved, with its reason, instead of null/"auto"; nothing is written."""
    out = tmp_path / "r"
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", str(out), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    auto = printed["automatic"]
    assert {"run.amp", "run.channels_last", "data.stream"} <= set(auto), auto
    assert printed["run"]["amp"] == auto["run.amp"]["value"] in ("bf16", "none") and auto["run.amp"]["why"]
    assert printed["run"]["channels_last"] is auto["run.channels_last"]["value"] and "timed" in \
        auto["run.channels_last"]["why"]
    assert printed["data"]["stream"] == "off" and not out.exists()
    # what was given is not automatic
    assert main(["train", "--data", "digits", "--epochs", "1", "--amp", "none", "--no-channels-last", "--out",
                 str(out), "--dry-run"]) == 0
    assert set(json.loads(capsys.readouterr().out)["automatic"]) == {"data.stream", "run.keep_best"}


def test_a_prepared_run_is_what_the_trainer_trains(tmp_path):
    """prepare() resolves once; the Trainer, the task and the saved config.json all hold that same config."""
    from resnetkit.train import RunRequest, Trainer, prepare

    run = prepare(RunRequest(flags={"data": "digits", "model": "resnet20", "schedule.steps": 2, "data.batch_size": 32,
                                    "run.out": str(tmp_path / "r"), "run.amp": "none"}))
    assert run.cfg.model.arch == "resnet20" and run.cfg.data.name == "digits" and run.cfg.run.amp == "none"
    assert isinstance(run.cfg.run.channels_last, bool)  # decided, not "auto"
    trainer = Trainer(run)
    assert trainer.cfg is run.cfg is run.task.cfg
    trainer.fit()
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == json.loads(json.dumps(run.cfg.to_dict()))
