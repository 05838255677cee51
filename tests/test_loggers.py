"""--log tensorboard,mlflow through the CLI, read back with the libraries' own readers (TensorBoard's event
accumulator, MlflowClient); a run killed and resumed appends to the same TensorBoard folder and MLflow run
without reporting a step twice."""

import json

import pytest

from resnetkit.cli import main
from resnetkit.train import Trainer, resolve
from tests.hostile import StopAt

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = ["--data", "digits", "--model", "resnet20", "--batch-size", "64", "--amp", "none", "--no-channels-last",
        "--threads", "1", "--set", "data.subset=512", "--set", "run.log_every=2"]


def _tb(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run.resolve() / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("resnetkit").experiment_id])
    return client, r



def test_tensorboard_and_mlflow_through_the_cli(tmp_path):
    run = tmp_path / "r"
    assert main(["train", *ARGS, "--epochs", "2", "--log", "tensorboard,mlflow", "--out", str(run)]) == 0
    steps = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tb = _tb(run)
    assert [s for s, _ in tb["step/train_loss"]] == [s["step"] for s in steps] == list(range(2, 17, 2))
    assert [v for _, v in tb["step/train_loss"]] == pytest.approx([s["train_loss"] for s in steps], rel=1e-6)
    assert {"step/lr", "step/img_s", "step/grad_norm", "epoch/test_err"} <= set(tb)
    assert [s for s, _ in tb["epoch/test_err"]] == [r["step"] for r in rows]
    client, r = _mlflow(run)
    hist = client.get_metric_history(r.info.run_id, "test_err")
    assert [(m.step, m.value) for m in hist] == [(x["step"], pytest.approx(x["test_err"])) for x in rows]
    assert r.data.params["optim.lr"] == "0.1" and r.data.params["run.log"] == "tensorboard,mlflow"
    assert len(client.get_metric_history(r.info.run_id, "step_grad_norm")) == len(steps)


def test_a_resumed_run_appends_to_the_same_logs_once(tmp_path):
    def cfg():
        return resolve(None, ["data.subset=512", "run.log_every=2", "run.log=tensorboard,mlflow"],
                       {"data.name": "digits", "model.arch": "resnet20", "data.batch_size": 64, "schedule.epochs": 2,
                        "run.amp": "none", "run.channels_last": False, "run.out": str(tmp_path / "b")})
    assert Trainer(cfg(), hooks=[StopAt(5)]).fit()["interrupted"]  # steps 2, 4 reported with the checkpoint
    client, first = _mlflow(tmp_path / "b")
    assert [m.step for m in client.get_metric_history(first.info.run_id, "step_train_loss")] == [2, 4]
    Trainer(cfg(), resume=True).fit()
    client, again = _mlflow(tmp_path / "b")  # still one run
    assert again.info.run_id == first.info.run_id
    assert [m.step for m in client.get_metric_history(again.info.run_id, "step_train_loss")] == list(range(2, 17, 2))
    assert [s for s, _ in _tb(tmp_path / "b")["step/train_loss"]] == list(range(2, 17, 2))


def test_an_unknown_logger_is_one_line(tmp_path, capsys):
    assert main(["train", *ARGS, "--epochs", "1", "--log", "wandb", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--log wandb" in err and "tensorboard, mlflow" in err
