"""The trainer's whole state in one file, written atomically and read with weights_only=True.

Everything is stored as tensors or plain Python types (RNG states included), so loading never
unpickles arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import random
import resource
import warnings
from pathlib import Path

import numpy as np
import torch

from resnetkit._helpers import atomic_write, load_state_dict_strict
from resnetkit.errors import CheckpointError, ConfigError, MissingFileError
from resnetkit.train.config import TrainConfig, check


def rng_state() -> dict:
    """Every RNG the run may draw from: python, numpy, torch CPU, and CUDA when present."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    torch's zip writer reports a failed write (a full disk, a file size limit) as a RuntimeError
    ("[enforce fail at inline_container.cc] ... unexpected pos", "PytorchStreamWriter failed writing
    file"); it is raised as the OSError it is, so the caller can say which file and keep the run."""
    with atomic_write(path, fsync=True) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            text = str(e)
            if not any(s in text for s in ("inline_container", "PytorchStreamWriter", "unexpected pos",
                                            "file write failed")):
                raise
            raise OSError(_write_errno(tmp), f"{os.strerror(_write_errno(tmp))} (torch.save stopped part-way)",
                          str(path)) from None


def _write_errno(path: Path) -> int:
    """Why a write into `path`'s folder failed, as far as the file system says: ENOSPC when it is (nearly)
    full, EFBIG when the process's file size limit (RLIMIT_FSIZE) is what stopped it, else EIO."""
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return errno.ENOSPC
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and path.stat().st_size >= limit - (1 << 16):
            return errno.EFBIG
    except OSError:
        pass
    return errno.EIO


VERSION = 2  # 2: task state, epoch sums over all processes
# What every checkpoint of this version holds (the trainer's state_dict).
KEYS = ("version", "config", "model", "optimizer", "ema", "task", "step", "total_steps", "epoch", "batch_in_epoch",
        "epoch_sums", "epoch_seconds", "rng")


def _first_line(e: Exception, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """A trainer checkpoint, read with weights_only=True (no arbitrary unpickling), whose version and
    keys are checked; anything else is a CheckpointError saying what the file is not."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"resume: no checkpoint at {path}; start a new run, or point run.out at the run "
                               "to continue")
    try:
        with path.open("rb") as f:
            head = f.read(10)
        if len(head) == 10 and head[8:10] == b'{"' and 0 < int.from_bytes(head[:8], "little") < 1 << 30:
            raise CheckpointError(f"{path}: a safetensors file (weights, such as model.safetensors), not a training "
                                  "checkpoint")
        # mmap reads only what is used (the config), but needs torch.save's zip format; anything else is
        # read whole, so that a foreign file gets the same verdict either way.
        with warnings.catch_warnings():  # torch's warnings about odd pickles would add lines to the one error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head[:4] == b"PK\x03\x04")
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(e)})") from None
        # weights_only refused an object: never advise turning it off for a file of unknown origin.
        raise CheckpointError(f"{path}: refused: not a checkpoint of plain tensors and values (a foreign, damaged "
                              "or tampered file); nothing in it was run") from None
    except Exception as e:  # a truncated, empty or foreign file: say which, not a traceback
        if not head:
            raise CheckpointError(f"{path}: an empty file, not a checkpoint (a copy or a save that never finished?)"
                                  ) from None
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {_first_line(e)}); not a "
                              "checkpoint written by resnetkit's trainer, or a damaged one") from None
    if not isinstance(state, dict) or not isinstance(state.get("version"), int) or "config" not in state:
        raise CheckpointError(f"{path}: not a resnetkit training checkpoint (no version and config)")
    version = state["version"]
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer resnetkit (checkpoint version {version}; this one reads "
                              f"{VERSION}); upgrade resnetkit to resume it")
    if version < VERSION:
        raise CheckpointError(f"{path}: written by an older resnetkit (checkpoint version {version}; this one reads "
                              f"{VERSION}); it cannot be resumed, start a new run")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete training checkpoint (missing {', '.join(missing)})")
    return state


def counters(state: dict, path: Path, steps_per_epoch: int, sums_shape, task: str) -> tuple[dict, torch.Tensor]:
    """The checkpoint's step counters and epoch sums, refused when impossible for this run."""
    counts = {k: state[k] for k in ("step", "total_steps", "epoch", "batch_in_epoch")}
    if any(type(v) is not int or v < 0 for v in counts.values()) or counts["batch_in_epoch"] > steps_per_epoch or \
            counts["step"] > counts["total_steps"] or not 1 <= counts["total_steps"] <= 10**9:
        raise CheckpointError(f"{path}: impossible counters {counts}")
    sums = state["epoch_sums"]
    if not isinstance(sums, torch.Tensor) or sums.shape != sums_shape:
        raise CheckpointError(f"{path}: epoch_sums do not fit the {task} task")
    return counts, sums


def saved_config(state: dict, path: Path) -> TrainConfig:
    """The run's config from a loaded checkpoint, with every key and value checked."""
    try:
        cfg = TrainConfig.from_dict(state["config"])
        check(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is not valid ({e})") from None
    return cfg


def run_config(run_dir: str | Path, checkpoint_name: str = "checkpoint.pt") -> TrainConfig:
    """The config of the run in `run_dir`, as its checkpoint holds it (memory-mapped: tensors are not read),
    with run.out set to `run_dir`, where the run is now."""
    path = Path(run_dir) / checkpoint_name
    cfg = saved_config(load_checkpoint(path, mmap=True), path)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(run_dir)))


def trainer_state(t) -> dict:
    """A Trainer's whole state, as checkpoint.pt holds it (KEYS, plus the optional ones: scaler, selection)."""
    return {
        "version": VERSION,
        "config": t.cfg.to_dict(),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),  # fp16's loss scale ({} when off)
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "task": t.task.state_dict(),
        "step": t.step,
        "total_steps": t.total,
        "epoch": t.epoch,  # epochs completed
        "batch_in_epoch": t.batch_in_epoch,  # batches of the current epoch already trained
        "epoch_sums": t.epoch_sums,  # this rank's; save_checkpoint stores the sum over all ranks
        "epoch_seconds": t.epoch_seconds,
        "selection": t.selection.state_dict(),
        "loggers": t.loggers.state_dict(),
        "rng": rng_state(),
        "torch_version": str(torch.__version__),
    }


def restore(t, state: dict, path: Path) -> None:
    """Put a loaded checkpoint's state back into Trainer `t` (built from the run's config)."""
    counts, sums = counters(state, path, t.spe, t.epoch_sums.shape, t.cfg.task)
    t.task.load_state_dict(state["task"])
    try:
        load_state_dict_strict(t.model, state["model"], source="the checkpoint")
    except CheckpointError as e:
        raise CheckpointError(f"{path}: its model does not fit its saved config ({e})") from None
    t.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    if t.ema is not None:
        load_state_dict_strict(t.ema.module, state["ema"], source=f"{path} (ema)")
    t.step, t.total = counts["step"], counts["total_steps"]
    t.epoch, t.batch_in_epoch = counts["epoch"], counts["batch_in_epoch"]
    # The saved sums are over all processes: rank 0 carries them on, the others start from zero.
    if t.d.main:
        t.epoch_sums = sums.to(torch.float64)
    t.epoch_seconds = float(state["epoch_seconds"])
    if isinstance(state.get("selection"), dict):  # checkpoints before run.keep_best have none
        t.selection.load_state_dict(state["selection"])
    t.loggers.load_state_dict(state.get("loggers"))
    set_rng_state(state["rng"])
