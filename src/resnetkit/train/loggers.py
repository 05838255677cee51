"""Experiment trackers a run reports to (`run.log`, CLI `--log tensorboard,mlflow`): small objects the Trainer
calls at fixed points on rank 0, in the shape of Lightning's `Logger.log_metrics`.

Each logger is told only what the run folder has committed: the step rows (steps.jsonl: loss, lr, img/s and
the gradient norm every run.log_every steps) and the epoch row, right after the epoch's all-or-nothing
commit (or an interrupted run's checkpoint). So a run killed and resumed never reports a step twice, and
every step it reports is one its checkpoint holds. What a logger must keep to continue (MLflow's run id) is
in checkpoint.pt (`state_dict`), so a resumed run appends to the same TensorBoard folder and MLflow run.

  tensorboard   RUN/tensorboard event files (torch.utils.tensorboard; the `tensorboard` extra)
  mlflow        a tracking store, by default sqlite:///RUN/mlflow.db (a real tracking database, no server),
                or run.mlflow_uri; experiment "resnetkit" (the `mlflow` extra: mlflow-skinny, sqlalchemy)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from resnetkit.errors import ConfigError, UserError

log = logging.getLogger("resnetkit.train")

LOGGERS = ("tensorboard", "mlflow")


def parse_loggers(text: str) -> tuple[str, ...]:
    """'tensorboard,mlflow' -> ("tensorboard", "mlflow"); "" or "none" -> ()."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"run.log={text}: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
    return names


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


def _scalars(row: dict, skip=("step", "epoch")) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, int | float)
            and not isinstance(v, bool) and v == v}


class TensorBoardLogger:
    def __init__(self, run_dir: Path, cfg: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional: the tensorboard extra)
        except ImportError:
            raise UserError("run.log=tensorboard needs TensorBoard: pip install 'resnetkit[tensorboard]'") from None
        self.writer_cls, self.dir, self.cfg, self.writer = SummaryWriter, Path(run_dir) / "tensorboard", cfg, None

    def start(self, step: int) -> None:
        # purge_step: events a crash left after the checkpoint's step are hidden from the readers
        self.writer = self.writer_cls(str(self.dir), purge_step=step if step else None)
        if not step:
            self.writer.add_text("config", f"```\n{json.dumps(self.cfg, indent=2)}\n```", 0)

    def log(self, steps: list[dict], epoch_row: dict | None) -> None:
        for s in steps:
            for k, v in _scalars(s).items():
                self.writer.add_scalar(f"step/{k}", v, s["step"])
        if epoch_row is not None:
            for k, v in _scalars(epoch_row).items():
                self.writer.add_scalar(f"epoch/{k}", v, epoch_row["step"])
        self.writer.flush()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowLogger:
    def __init__(self, run_dir: Path, cfg: dict, uri: str | None):
        try:
            import mlflow  # noqa: PLC0415 (optional: the mlflow extra)
        except ImportError:
            raise UserError("run.log=mlflow needs MLflow: pip install 'resnetkit[mlflow]'") from None
        self.mlflow, self.cfg = mlflow, cfg
        self.uri = uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.run_id: str | None = None
        self.client = None

    def start(self, step: int) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its migrations print a line per table
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = self.mlflow.tracking.MlflowClient(self.uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name("resnetkit")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("resnetkit")
            self.run_id = self.client.create_run(exp_id, run_name=Path(self.cfg["run"]["out"]).name).info.run_id
            params = _flat(self.cfg)
            keys = sorted(params)
            for i in range(0, len(keys), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=[self.mlflow.entities.Param(k, str(params[k])[:6000])
                                                           for k in keys[i:i + 100]])

    def log(self, steps: list[dict], epoch_row: dict | None) -> None:
        Metric = self.mlflow.entities.Metric
        metrics = [Metric(f"step_{k}", v, 0, s["step"]) for s in steps for k, v in _scalars(s).items()]
        if epoch_row is not None:
            metrics += [Metric(k, v, 0, epoch_row["step"]) for k, v in _scalars(epoch_row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "uri": self.uri}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)


class Loggers:
    """The run's loggers (rank 0; none elsewhere), as the Trainer uses them. A logger that fails while the run
    trains (a tracking store gone) is reported once and dropped; the run goes on."""

    def __init__(self, run_dir: Path, cfg, main: bool = True):
        names = parse_loggers(cfg.run.log) if main else ()
        self.items = {n: (TensorBoardLogger(run_dir, cfg.to_dict()) if n == "tensorboard" else
                          MlflowLogger(run_dir, cfg.to_dict(), cfg.run.mlflow_uri)) for n in names}

    def _each(self, what: str, *args) -> None:
        for name, lg in list(self.items.items()):
            try:
                getattr(lg, what)(*args)
            except Exception as e:  # noqa: BLE001  (a tracker's failure must not end the training run)
                log.warning("logger %s failed (%s: %s); the run goes on without it", name, type(e).__name__, e)
                del self.items[name]

    def start(self, step: int) -> None:
        self._each("start", step)

    def log(self, steps: list[dict], epoch_row: dict | None) -> None:
        self._each("log", steps, epoch_row)

    def close(self) -> None:
        self._each("close")

    def state_dict(self) -> dict:
        return {n: lg.state_dict() for n, lg in self.items.items()}

    def load_state_dict(self, state: dict) -> None:
        for n, s in (state or {}).items():
            if n in self.items and isinstance(s, dict):
                self.items[n].load_state_dict(s)
