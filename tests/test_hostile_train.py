"""The standing hostile-input suite for the training side: `resnetkit train` (classification and
segmentation) and `resnetkit reproduce`. Every case is made here, run through the CLI in process, and must
end as tests/test_hostile.py's cases do:

  * the expected exit status (2 for a user's mistake),
  * exactly one line on stderr, `resnetkit: error: ...`, naming the problem, and no traceback,
  * no pre-existing file changed (every file is hashed before and after) and no new file left behind,
  * nothing left in the temporary directory,
  * no code run from a file (pickles try to create a canary file).

Categories (see CATEGORY_MIN at the bottom): every train argument at its edges, for classification and
segmentation; `--set` edge cases; hostile `--config` files; `--resume` with hostile checkpoints; `--resume`
with values that cannot change; run folders that are not new, empty or a run; datasets whose labels are
wrong (caught while loading, before the first step); `reproduce` arguments and folders; and, in their own
tests, disk faults during training and a torn metrics.jsonl (which resumes).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import resnetkit
from resnetkit.data.shapes import make_shapes
from resnetkit.data.shards import pack
from resnetkit.train import Trainer, resolve
from resnetkit.train.config import Origin
from resnetkit.weights import save_weights
from tests.hostile import StopAt, assert_refused, copy, hashes, left_in, mat, run_cli, sandbox, voc_copy
from tests.idx_data import write_idx_files

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass
class Case:
    id: str
    category: str
    build: Callable[[Path, Path], list[str]]  # (work folder, canary path) -> argv
    needle: str  # must appear in the one error line
    rc: int = 2


CASES: list[Case] = []


def case(category: str, id: str, needle: str, rc: int = 2):
    def wrap(build):
        CASES.append(Case(f"{category}-{id}", category, build, needle, rc))
        return build
    return wrap


# ------------------------------------------------------------------------------------------ materials
# A classification run stopped at step 3 of 4 (mid-epoch 2: marker, config.json, one metrics row, curves,
# checkpoint), made in a folder called "run" so that a copy resumed as `--out run` rewrites config.json
# byte for byte; and a tiny shapes set for segmentation.
RUN_FLAGS = {"model.arch": "resnet20", "data.name": "digits", "data.subset": 64, "data.batch_size": 32,
             "data.eval_subset": 32, "schedule.steps": 4, "run.threads": 1, "run.out": "run"}


@pytest.fixture(scope="module")
def materials(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("train-materials")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = Trainer(resolve(flags=RUN_FLAGS), hooks=[StopAt(3)]).fit()
    finally:
        os.chdir(cwd)
    assert result["interrupted"] and result["step"] == 3
    # The same run, finished early at schedule.max_steps=2 (weights written), to be taken further.
    (root / "early").mkdir()
    os.chdir(root / "early")
    try:
        result = Trainer(resolve(flags={**RUN_FLAGS, "schedule.max_steps": 2})).fit()
    finally:
        os.chdir(cwd)
    assert not result["interrupted"] and (root / "early" / "run" / "model.safetensors").is_file()
    make_shapes(root / "shapes", n_train=4, n_val=2, size=17, seed=0)
    save_weights(resnetkit.create_model("resnet20", num_classes=10, in_chans=1), root / "weights.safetensors")
    return root


@pytest.fixture
def work(materials, tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(work folder, the current directory; temp folder, $TMPDIR; canary path)."""
    return sandbox(materials, tmp_path, monkeypatch)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_hostile_train_input(c: Case, work, capsys):
    w, tmp, canary = work
    argv = [str(a) for a in c.build(w, canary)]
    before = hashes(w)
    rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, c.rc, c.needle, before, w, tmp, canary)


# ====================================================================== 1. train arguments at their edges
CLS = ["train", "--model", "resnet20", "--data", "digits", "--subset", "64", "--batch-size", "32",
       "--set", "data.eval_subset=32", "--set", "schedule.steps=2", "--out", "out"]
CLS_NO_LENGTH = ["train", "--model", "resnet20", "--data", "digits", "--subset", "64", "--out", "out"]


def _cls(*extra: str) -> Callable:
    return lambda w, c: [*CLS, *extra]


def _seg(*extra: str, data: str | None = None) -> Callable:
    def build(w, c):
        shapes = data or str(copy("shapes", w))
        return ["train", "--task", "segmentation", "--data", shapes, "--model", "resnet20", "--output-stride", "4",
                "--crop-size", "17", "--batch-size", "2", "--set", "schedule.steps=2", "--out", "out", *extra]
    return build


ARG_CASES = {
    # classification: sizes and counts
    "batch-size-zero": (_cls("--batch-size", "0"), "--batch-size 0: data.batch_size=0"),
    "batch-size-negative": (_cls("--batch-size", "-32"), "--batch-size -32"),
    "batch-size-not-int": (_cls("--batch-size", "two"), "--batch-size"),
    "batch-size-above-the-set": (_cls("--batch-size", "100000"),
                                 "--batch-size 100000, --subset 64: the training set has 64"),
    "subset-negative": (_cls("--subset", "-1"), "--subset -1: data.subset"),
    "threads-negative": (_cls("--threads", "-1"), "--threads -1: run.threads"),
    "threads-huge": (_cls("--threads", "100000"), "--threads 100000"),
    "seed-negative": (_cls("--seed", "-1"), "--seed -1: run.seed"),
    "seed-huge": (_cls("--seed", str(2**64)), f"--seed {2**64}"),
    # lengths
    "epochs-zero": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "0"], "say how long to train"),
    "epochs-negative": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "-1"], "--epochs -1.0: schedule.epochs"),
    "epochs-nan": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "nan"], "--epochs nan"),
    "epochs-inf": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "inf"], "--epochs inf"),
    "epochs-huge": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "1e308"], "--epochs 1e+308"),
    "budget-nan": (lambda w, c: [*CLS_NO_LENGTH, "--budget-min", "nan"], "--budget-min nan"),
    "budget-negative": (lambda w, c: [*CLS_NO_LENGTH, "--budget-min", "-5"], "--budget-min -5.0"),
    "budget-inf": (lambda w, c: [*CLS_NO_LENGTH, "--budget-min", "inf"], "--budget-min inf"),
    "epochs-and-budget": (lambda w, c: [*CLS_NO_LENGTH, "--epochs", "1", "--budget-min", "1"], "--budget-min"),
    # learning rate
    "lr-zero": (_cls("--lr", "0"), "--lr 0.0: optim.lr"),
    "lr-negative": (_cls("--lr", "-0.1"), "--lr -0.1"),
    "lr-nan": (_cls("--lr", "nan"), "--lr nan: optim.lr=nan: must be a finite number > 0"),
    "lr-inf": (_cls("--lr", "inf"), "--lr inf"),
    "lr-not-a-number": (_cls("--lr", "fast"), "--lr"),
    # names
    "amp-unknown": (_cls("--amp", "fp8"), "--amp"),
    "task-unknown": (_cls("--task", "detection"), "--task"),
    "model-unknown": (_cls("--model", "resnet21"), "unknown model"),
    "model-empty": (_cls("--model", ""), "--model : model.arch"),
    "data-unknown": (_cls("--data", "imagenet21k"), "unknown dataset"),
    "data-dir-missing": (_cls("--data", "mnist", "--data-dir", "/nonexistent/dir"), "no such directory"),
    "segmentation-flag": (_cls("--head", "aspp"), "--head aspp: model.head is a setting of task segmentation"),
    "out-empty": (_cls("--out", ""), "run.out"),
    # segmentation
    "seg-crop-zero": (_seg("--crop-size", "0"), "--crop-size 0: data.crop_size"),
    "seg-crop-tiny": (_seg("--crop-size", "4"), "--crop-size 4"),
    "seg-crop-huge": (_seg("--crop-size", "100000"), "--crop-size 100000"),
    "seg-min-scale-nan": (_seg("--min-scale", "nan"), "--min-scale nan"),
    "seg-min-scale-zero": (_seg("--min-scale", "0"), "--min-scale 0.0"),
    "seg-max-scale-inf": (_seg("--max-scale", "inf"), "--max-scale inf"),
    "seg-scales-reversed": (_seg("--min-scale", "2", "--max-scale", "1"),
                            "--min-scale 2.0, --max-scale 1.0: data.min_scale=2.0, data.max_scale=1.0"),
    "seg-output-stride-three": (_seg("--output-stride", "3"), "--output-stride"),
    "seg-head-unknown": (_seg("--head", "fpn"), "--head"),
    "seg-batch-zero": (_seg("--batch-size", "0"), "--batch-size 0"),
    "seg-lr-nan": (_seg("--lr", "nan"), "--lr nan"),
    "seg-classification-flag": (_seg("--data-dir", "x"),
                                "--data-dir x: data.data_dir is a setting of task classification"),
    "seg-no-data": (lambda w, c: ["train", "--task", "segmentation", "--epochs", "1", "--out", "out"],
                    "data.path is required"),
    "seg-data-missing": (_seg(data="nowhere"), "no such directory"),
    "seg-data-is-a-file": (lambda w, c: (Path("f.txt").write_text("mine"), _seg(data="f.txt")(w, c))[1],
                           "f.txt"),
    "seg-backbone-weights-missing": (_seg("--backbone-weights", "none.safetensors"), "no such weights file"),
    "seg-out-inside-the-data": (lambda w, c: [*_seg()(w, c), "--out", "shapes/run"], "inside the input"),
    "seg-aspp-one-image-per-micro-batch": (_seg("--head", "aspp", "--set", "optim.grad_accum=2"),
                                           "model.head='aspp'"),
    "seg-split-is-a-path": (_seg("--set", "data.train_split=../../etc/passwd"), "data.train_split"),
    "seg-kwargs-unknown": (_seg("--set", 'model.kwargs={"bogus": 1}'), "model.kwargs"),
}
for _id, (_build, _needle) in ARG_CASES.items():
    case("args", _id, _needle)(_build)


# ====================================================================== 2. --set at its edges
# text -> what the one line holds after "--set TEXT: " (None: the whole needle is given, for the errors that
# come from more than one place or from the data)
DEEP = "[" * 5000 + "]" * 5000
SET_CASES = {
    "optim.lr=NaN": "optim.lr=nan: must be a finite number > 0",
    "optim.lr=Infinity": "optim.lr=inf",
    "optim.lr=-Infinity": "optim.lr=-inf",
    'optim.lr={"a": [1, {"b": 2}]}': "optim.lr={'a': [1, {'b': 2}]} is not a valid number",
    "optim.momentum=1.5": "optim.momentum=1.5",
    "optim.momentum=-0.1": "optim.momentum=-0.1",
    "optim.weight_decay=-1": "optim.weight_decay=-1",
    "optim.weight_decay=NaN": "optim.weight_decay=nan",
    "optim.label_smoothing=1": "optim.label_smoothing=1",
    "optim.ema_decay=1": "optim.ema_decay=1",
    "optim.ema_decay=NaN": "optim.ema_decay=nan",
    "optim.grad_accum=0": "optim.grad_accum=0",
    "optim.nesterov=maybe": "optim.nesterov='maybe' is not a valid boolean",
    "schedule.name=linear": "schedule.name='linear': choose step, cosine or onecycle",
    "schedule.warmup=quadratic": "schedule.warmup='quadratic'",
    'schedule.milestones=["a"]': "schedule.milestones=['a'] is not a valid list of numbers",
    "schedule.milestones=[0.5,-1]": "schedule.milestones=[0.5, -1.0]",
    "schedule.milestones=[]": "schedule.milestones=[]",
    "schedule.milestones=[1.5]": "schedule.milestones=[1.5]",
    f"schedule.milestones={DEEP}": None,
    "schedule.gamma=0": "schedule.gamma=0",
    "schedule.gamma=NaN": "schedule.gamma=nan",
    "schedule.final_lr_frac=2": "schedule.final_lr_frac=2",
    "schedule.warmup_steps=-1": "schedule.warmup_steps=-1",
    "schedule.warmup_lr=Infinity": "schedule.warmup_lr=inf",
    "schedule.steps=1e30": "schedule.steps=",
    "schedule.steps=1.5": "schedule.steps=1.5 is not a valid whole number",
    f"data.batch_size=1{'0' * 400}": "data.batch_size=1000",
    f"optim.lr=1{'0' * 400}": "optim.lr=1000",
    f"run.seed=1{'0' * 400}": "run.seed=1000",
    f"schedule.milestones=[1{'0' * 400}]": "schedule.milestones=[1000",
    "schedule.max_steps=-3": "schedule.max_steps=-3",
    "run.log_every=0": "run.log_every=0",
    "run.amp=fp8": "run.amp='fp8'",
    "run.threads=-1": "run.threads=-1",
    "run.seed=-1": "run.seed=-1",
    "run.deterministic=maybe": "run.deterministic='maybe'",
    "data.batch_size=true": "data.batch_size=True is not a valid whole number",
    'data.batch_size="32"': "data.batch_size='32' is not a valid whole number",
    "data.pad=1000": "data.pad=1000",
    "data.cutout=-1": "data.cutout=-1",
    "data.channels=2": "data.channels=2",
    "data.image_size=0": "data.image_size=0",
    "data.eval_batch_size=0": "data.eval_batch_size=0",
    "model.kwargs=[1]": "model.kwargs=[1] is not a valid table",
    "model.arch=null": "model.arch=None is not a valid string",
    "optim.lrr=1": "unknown key optim.lrr for task classification; did you mean optim.lr",
    "optm.lr=1": "unknown section 'optm'; did you mean optim?",
    "data.path=x": "unknown key data.path for task classification",
    "lr=1": "expected SECTION.KEY=VALUE",
    "a.b.c=1": "expected SECTION.KEY=VALUE",
    "=1": "expected SECTION.KEY=VALUE",
    "optim.lr": "expected SECTION.KEY=VALUE",
    # not from --set alone
    "optim.grad_accum=3": None,
    "run.out=/dev/null/run": None,
    'model.kwargs={"num_classes": 5}': None,
}
SET_NEEDLES = {"optim.grad_accum=3": "--batch-size 32, --set optim.grad_accum=3: data.batch_size=32 must be a "
                                     "positive multiple of optim.grad_accum=3",
               "run.out=/dev/null/run": "/dev/null is a file, not a folder",
               'model.kwargs={"num_classes": 5}': "model.kwargs={'num_classes': 5}",
               # the line names the override cut short: 10,000 brackets do not fill it
               f"schedule.milestones={DEEP}": f"--set schedule.milestones={'[' * 57}...: schedule.milestones='[[[["}
for _i, (_text, _rest) in enumerate(SET_CASES.items()):
    _label = Origin("override", _text).short()  # a long override is named cut short
    case("set", f"{_i:02d}-{_text[:30]}", SET_NEEDLES[_text] if _rest is None else f"--set {_label}: {_rest}")(
        lambda w, c, t=_text: [*CLS, "--set", t])


# ====================================================================== 3. hostile --config files
def _config(name: str, content: str | bytes) -> Callable:
    def build(w, c):
        p = w / name
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        return [*CLS, "--config", name]
    return build


CONFIG_CASES = {
    "toml-broken": (_config("c.toml", "[optim\nlr = "), "--config c.toml: cannot parse it as TOML"),
    "json-broken": (_config("c.json", '{"optim": {"lr": '), "--config c.json: cannot parse it as JSON"),
    "json-a-list": (_config("c.json", "[1, 2, 3]"), "--config c.json: expected a table of sections"),
    "json-nan": (_config("c.json", '{"optim": {"lr": NaN}}'), "--config c.json: optim.lr=nan: must be a finite"),
    "json-infinity": (_config("c.json", '{"schedule": {"epochs": Infinity}}'), "--config c.json: schedule.epochs=inf"),
    "json-wrong-type": (_config("c.json", '{"optim": {"lr": "fast"}}'), "optim.lr='fast' is not a valid number"),
    "json-whole-number-wanted": (_config("c.json", '{"data": {"batch_size": 1.5}}'), "data.batch_size=1.5"),
    "json-list-of-garbage": (_config("c.json", '{"schedule": {"milestones": ["a", 1]}}'), "schedule.milestones"),
    "json-unknown-section": (_config("c.json", '{"optm": {"lr": 1}}'), "--config c.json: unknown section 'optm'"),
    "json-unknown-key": (_config("c.json", '{"optim": {"lrr": 1}}'), "unknown key optim.lrr"),
    "json-section-not-a-table": (_config("c.json", '{"optim": 5}'), "section 'optim' must be a table"),
    "json-nested-garbage": (_config("c.json", '{"optim": {"lr": {"x": [1, {"y": [2]}]}}}'), "optim.lr="),
    "json-deep-nesting": (_config("c.json", "[" * 100000 + "]" * 100000), "--config c.json: cannot parse"),
    "json-kwargs-not-a-table": (_config("c.json", '{"model": {"kwargs": "x"}}'), "model.kwargs='x'"),
    "toml-date-for-a-number": (_config("c.toml", "[optim]\nlr = 1979-05-27\n"), "optim.lr=datetime"),
    "toml-date-in-kwargs": (_config("c.toml", "[model.kwargs]\nwhen = 1979-05-27\n"), "model.kwargs="),
    "json-nan-in-kwargs": (_config("c.json", '{"model": {"kwargs": {"drop_rate": NaN}}}'), "model.kwargs="),
    "binary-garbage": (_config("c.json", bytes(range(256)) * 4), "--config c.json: not UTF-8 text"),
    "empty-json": (_config("c.json", ""), "--config c.json: cannot parse"),
    "huge-file": (_config("c.json", b" " * (1 << 20) + b"{}"), "a config file is a small text file"),
    "task-a-list": (_config("c.json", '{"task": ["x"]}'), "--config c.json: task=['x']"),
    "task-unknown": (_config("c.json", '{"task": "detection"}'), "--config c.json: task='detection'"),
    "task-other-than-flag": (lambda w, c: [*_config("c.json", '{"task": "segmentation"}')(w, c), "--task",
                                           "classification"], "task='segmentation', but"),
    "missing-file": (lambda w, c: [*CLS, "--config", "nope.toml"], "--config nope.toml: no such file"),
    "a-folder": (lambda w, c: ((w / "cfgdir").mkdir(), [*CLS, "--config", "cfgdir"])[1],
                 "--config cfgdir: not a file"),
}
for _id, (_build, _needle) in CONFIG_CASES.items():
    case("config", _id, _needle)(_build)


# ====================================================================== 4. --resume with hostile checkpoints
class _Evil:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (open, (str(self.canary), "w"))


def _state() -> dict:
    return torch.load(mat("run/checkpoint.pt"), weights_only=True)


def _resume_with(make: Callable[[Path, Path], None], *extra: str) -> Callable:
    """The stopped run, copied to `run`, its checkpoint replaced by make(path, canary); then --resume."""
    def build(w, c):
        run = copy("run", w)
        make(run / "checkpoint.pt", c)
        return ["train", "--out", "run", "--resume", *extra]
    return build


def _zip(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "a zip, not a checkpoint")


def _edited(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def make(path, c):
        state = _state()
        edit(state)
        torch.save(state, path)
    return make


CHECKPOINT_CASES = {
    "canary-in-torch-save": (lambda p, c: torch.save({**_state(), "extra": _Evil(c)}, p), "refused"),
    "canary-raw-pickle": (lambda p, c: p.write_bytes(pickle.dumps({"version": 2, "config": _Evil(c)})), "refused"),
    "truncated": (lambda p, c: p.write_bytes(mat("run/checkpoint.pt").read_bytes()[:40000]),
                  "cannot read checkpoint"),
    "empty": (lambda p, c: p.write_bytes(b""), "an empty file, not a checkpoint"),
    "foreign-safetensors": (lambda p, c: save_file({"a": torch.zeros(3)}, p), "a safetensors file"),
    "foreign-weights-file": (lambda p, c: shutil.copy(mat("weights.safetensors"), p), "a safetensors file"),
    "random-bytes": (lambda p, c: p.write_bytes(np.random.default_rng(0).bytes(5000)), "checkpoint"),
    "zip-of-something-else": (lambda p, c: _zip(p), "cannot read checkpoint"),
    "not-a-dict": (lambda p, c: torch.save([1, 2, 3], p), "not a resnetkit training checkpoint"),
    "a-state-dict": (lambda p, c: torch.save({"conv.weight": torch.zeros(1)}, p),
                     "not a resnetkit training checkpoint"),
    "newer-version": (_edited(lambda s: s.update(version=3)), "written by a newer resnetkit"),
    "older-version": (_edited(lambda s: s.update(version=1)), "written by an older resnetkit"),
    "missing-keys": (_edited(lambda s: s.pop("rng")), "missing rng"),
    "config-of-unknown-task": (_edited(lambda s: s["config"].update(task="detection")),
                               "its saved config is not valid (task='detection'"),
    "config-of-another-task": (_edited(lambda s: s["config"].update(task="segmentation")),
                               "its saved config is not valid"),
    "config-lr-nan": (_edited(lambda s: s["config"]["optim"].update(lr=float("nan"))),
                      "its saved config is not valid (optim.lr=nan"),
    "config-not-a-table": (_edited(lambda s: s.update(config=[1])), "its saved config is not valid"),
    "tensors-of-another-model": (_edited(lambda s: s["config"]["model"].update(arch="resnet32")), "missing in"),
    "counters-impossible": (_edited(lambda s: s.update(step=-5)), "impossible counters"),
    "epoch-sums-wrong": (_edited(lambda s: s.update(epoch_sums=torch.zeros(7))), "epoch_sums do not fit"),
    "rng-garbage": (_edited(lambda s: s.update(rng={"python": 5})), "does not fit this run's config"),
    "optimizer-garbage": (_edited(lambda s: s.update(optimizer={"state": {}, "param_groups": []})),
                          "does not fit this run's config"),
    "a-folder": (lambda p, c: (p.unlink(), p.mkdir()), "no checkpoint at"),
}
for _id, (_make, _needle) in CHECKPOINT_CASES.items():
    case("checkpoint", _id, _needle)(_resume_with(_make))

case("checkpoint", "no-run-there", "no checkpoint at")(lambda w, c: ["train", "--out", "nowhere", "--resume"])
case("checkpoint", "metrics-line-garbage", "line 1 is not a metrics row")(
    lambda w, c: (copy("run", w), (w / "run" / "metrics.jsonl").write_text("{not json\n{\"epoch\": 1}\n"),
                  ["train", "--out", "run", "--resume"])[2])
case("checkpoint", "metrics-row-without-epoch", "not a metrics row")(
    lambda w, c: (copy("run", w), (w / "run" / "metrics.jsonl").write_text("[1, 2]\n"),
                  ["train", "--out", "run", "--resume"])[2])


# ====================================================================== 5. --resume with values that cannot change
def _resume(*extra: str) -> Callable:
    return lambda w, c: (copy("run", w), ["train", "--out", "run", "--resume", *extra])[1]


FROZEN_CASES = {
    "lr": (_resume("--lr", "0.3"), "--lr 0.3: optim.lr cannot change on resume"),
    "batch-size": (_resume("--batch-size", "16"), "--batch-size 16: data.batch_size cannot change"),
    "epochs": (_resume("--epochs", "5"), "--epochs 5.0: schedule.epochs cannot change"),
    "budget": (_resume("--budget-min", "5"), "--budget-min 5.0"),
    "model": (_resume("--model", "resnet32"), "--model resnet32: model.arch cannot change"),
    "data": (_resume("--data", "mnist"), "--data mnist: data.name cannot change"),
    "seed": (_resume("--seed", "7"), "--seed 7: run.seed cannot change"),
    "amp": (_resume("--amp", "fp16"), "--amp fp16: run.amp cannot change"),
    "deterministic": (_resume("--deterministic"), "--deterministic: run.deterministic cannot change"),
    "set-momentum": (_resume("--set", "optim.momentum=0.5"), "--set optim.momentum=0.5: optim.momentum cannot"),
    "set-schedule": (_resume("--set", "schedule.name=step"), "schedule.name cannot change"),
    "config-file": (lambda w, c: (Path("c.json").write_text('{"optim": {"lr": 0.5}}'),
                                  _resume("--config", "c.json")(w, c))[1], "--config c.json: optim.lr cannot change"),
    "task": (_resume("--task", "segmentation"), "--task segmentation: cannot change on resume"),
    "segmentation-flag": (_resume("--head", "aspp"), "--head aspp: model.head is a setting of task segmentation"),
    "resumable-but-invalid": (_resume("--threads", "-2"), "--threads -2: run.threads"),
}
for _id, (_build, _needle) in FROZEN_CASES.items():
    case("frozen", _id, _needle)(_build)


# ====================================================================== 6. run folders that are not new, empty or a run
def _folder(files: dict[str, bytes], *argv_tail: str, argv: list[str] | None = None) -> Callable:
    def build(w, c):
        for name, data in files.items():
            (w / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (w / "out" / name).write_bytes(data)
        return argv or [*CLS, *argv_tail]
    return build


SOMEONES = {"config.json": b'{"mine": true}\n', "metrics.jsonl": b'{"epoch": 1, "mine": true}\n'}
MARKER = b'{"kind": "train", "task": "classification"}'

FOLDER_CASES = {
    "someones-config-and-metrics": (_folder(SOMEONES), "not a resnetkit run directory"),
    "photos": (_folder({"holiday.jpg": b"\xff\xd8\xff" + b"0" * 100, "notes/todo.txt": b"x"}), "holiday.jpg"),
    "hidden-file-only": (_folder({".DS_Store": b"x"}), "not empty"),
    "run-with-checkpoint": (lambda w, c: (copy("run", w, "out"), CLS)[1], "holds a run (checkpoint.pt)"),
    "finished-run": (_folder({".resnetkit-run": MARKER, "checkpoint.pt": b"x", "model.safetensors": b"x"}),
                     "holds a finished run"),
    "run-without-checkpoint": (_folder({".resnetkit-run": MARKER, "config.json": b"{}"}),
                               "stopped before its first checkpoint"),
    "checkpoint-without-marker": (_folder({"checkpoint.pt": b"x", "config.json": b"{}"}), "older resnetkit"),
    "marker-garbage": (_folder({".resnetkit-run": b"\x00garbage", "checkpoint.pt": b"x"}), "holds a run"),
    "another-kind-of-folder": (_folder({".resnetkit-run": b'{"kind": "degradation"}'}), "not a training run"),
    "out-is-a-file": (lambda w, c: (Path("out").write_text("mine"), CLS)[1], "is a file, not a folder"),
    "out-under-a-file": (lambda w, c: (Path("f").write_text("mine"), [*CLS[:-1], "f/run"])[1],
                         "f is a file, not a folder"),
    "cifar-someones-folder": (_folder(SOMEONES, argv=["reproduce", "cifar", "--model", "resnet20", "--data-dir",
                                                      "nowhere", "--out", "out"]), "not a resnetkit run directory"),
    "degradation-someones-folder": (_folder(SOMEONES, argv=["reproduce", "degradation", "--data", "digits",
                                                            "--depths", "20", "--epochs", "1", "--out", "out"]),
                                    "not a degradation experiment's folder"),
    "degradation-someones-runs-folder": (_folder({"runs/mine.txt": b"x"}, argv=[
        "reproduce", "degradation", "--data", "digits", "--depths", "20", "--epochs", "1", "--out", "out"]),
        "out/runs is not empty"),
    "render-into-someones-folder": (lambda w, c: (Path("d.json").write_text("{}"), _folder(SOMEONES, argv=[
        "reproduce", "degradation", "--render", "d.json", "--out", "out"])(w, c))[1], "not a degradation"),
}
for _id, (_build, _needle) in FOLDER_CASES.items():
    case("folder", _id, _needle)(_build)


# ====================================================================== 7. datasets with wrong labels
def _idx_set(w: Path, train_labels=None, test_labels=None) -> Path:
    files = {"train-images-idx3-ubyte": np.zeros((4, 28, 28)), "train-labels-idx1-ubyte": np.arange(4) % 10,
             "t10k-images-idx3-ubyte": np.zeros((3, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(3) % 10}
    if train_labels is not None:
        files["train-labels-idx1-ubyte"] = train_labels
    if test_labels is not None:
        files["t10k-labels-idx1-ubyte"] = test_labels
    return write_idx_files(w / "fm", files)


def _fm(**labels) -> Callable:
    return lambda w, c: ["train", "--data", "fashion-mnist", "--data-dir", str(_idx_set(w, **labels)),
                         "--batch-size", "2", "--epochs", "1", "--out", "out"]


def _voc(mask: np.ndarray | None = None, split: str | None = None) -> Callable:
    return lambda w, c: _seg(data=str(voc_copy(w, "train", mask, split)))(w, c)


def _cifar_with(batch: Callable[[Path], bytes]) -> Callable:
    def build(w, c):
        d = w / "cifar" / "cifar-10-batches-py"
        d.mkdir(parents=True)
        good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (d / name).write_bytes(good)
        (d / "data_batch_3").write_bytes(batch(c))
        return ["train", "--data", "cifar10", "--data-dir", str(w / "cifar"), "--batch-size", "2", "--epochs", "1",
                "--out", "out"]
    return build


def _folder_set(w: Path) -> Path:
    root = w / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / cls / "ok.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def _jpeg_folder(w: Path, bad: dict[str, bytes] | None = None, classes=("a", "b")) -> Path:
    """imgs/train/CLASS/*.jpg and imgs/val/CLASS/*.jpg (tiny), plus `bad` files (relative path -> bytes)."""
    root = w / "imgs"
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(root / split / cls / "ok.jpg")
    for rel, data in (bad or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _stream(data: Callable[[Path], str], *extra: str) -> Callable:
    return lambda w, c: ["train", "--data", data(w), "--stream", "on", "--workers", "0", "--batch-size", "2",
                         "--set", "data.train_crop=8", "--set", "schedule.steps=1", "--out", "out", *extra]


def _imagenet(w: Path, *, truth: bool = True, folder: str = "n01440764") -> str:
    root = w / "in"
    for split in ("train/" + folder, "val"):
        (root / split).mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (12, 12)).save(root / "train" / folder / f"{i}.JPEG")
        Image.new("RGB", (12, 12)).save(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    if truth:
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
            f"ILSVRC2012_val_{i + 1:08d},n01440764 1 1 2 2\n" for i in range(2)))
    return f"imagenet:{root}"


def _shards_without_cls(w: Path) -> str:
    pack(_jpeg_folder(w), w / "sh")
    tar = w / "sh" / "train-000000.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(tar, "w") as t:
        for m, data in members:
            if not m.name.endswith(".cls"):
                t.addfile(m, io.BytesIO(data))
    return f"shards:{tar}"


def _empty_classes(w: Path) -> str:
    (w / "empty" / "a").mkdir(parents=True)
    (w / "empty" / "a" / "notes.txt").write_text("no images here")
    return f"folder:{w / 'empty'}"


JPEG_START = b"\xff\xd8\xff\xe0"  # a JPEG's first bytes, and nothing after
# Also in val/: evaluation reads every image, so strict=True meets them whichever images training draws.
UNREADABLE_CLASS = {"train/c/zero.jpg": b"", "train/c/cut.jpg": JPEG_START, "val/c/zero.jpg": b""}
TRUNCATED = {"train/a/cut.jpg": JPEG_START, "val/a/cut.jpg": JPEG_START}
STREAM_CASES = {
    "stream-folder-without-images": (_stream(_empty_classes), "hold no images"),
    "stream-class-of-unreadable-images-strict": (
        _stream(lambda w: f"folder:{_jpeg_folder(w, UNREADABLE_CLASS)}", "--strict"), "unreadable image"),
    "stream-truncated-jpeg-strict": (_stream(lambda w: f"folder:{_jpeg_folder(w, TRUNCATED)}", "--strict"),
                                     "cut.jpg: unreadable image"),
    "stream-on-a-named-dataset": (_stream(lambda w: "digits"), "--stream on"),
    "stream-val-folder-missing": (_stream(lambda w: f"folder:{_jpeg_folder(w)}", "--val", "/nonexistent/val"),
                                  "val_path /nonexistent/val: no such directory"),
    "imagenet-without-ground-truth": (_stream(lambda w: _imagenet(w, truth=False)), "ground truth was not found"),
    "imagenet-unknown-synset-folder": (_stream(lambda w: _imagenet(w, folder="cats")),
                                       "are not ILSVRC-2012 synsets"),
    "imagenet-without-train": (_stream(lambda w: f"imagenet:{w}"), "no train/ folder"),
    "shards-missing-cls-strict": (_stream(_shards_without_cls, "--strict"), "has no .cls label"),
    "shards-missing-file": (_stream(lambda w: f"shards:{w}/none-{{000000..000003}}.tar"),
                            "4 of 4 shards do not exist"),
}


DATA_CASES = {
    **STREAM_CASES,
    "idx-train-label-out-of-range": (_fm(train_labels=np.array([0, 1, 200, 3])), "outside the 10 classes"),
    "idx-test-label-out-of-range": (_fm(test_labels=np.array([0, 1, 99])), "outside the 10 classes"),
    "idx-label-count-mismatch": (_fm(train_labels=np.array([0, 1])), "4 images but 2 labels"),
    "cifar-label-out-of-range": (_cifar_with(lambda c: pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 42]}, protocol=2)), "outside the 10 classes"),
    "cifar-canary-pickle": (_cifar_with(lambda c: pickle.dumps({b"data": _Evil(c), b"labels": [0]}, protocol=2)),
                            "refusing to load"),
    "folder-unreadable-image-strict": (lambda w, c: ["train", "--data", f"folder:{_folder_set(w)}", "--strict",
                                                     "--batch-size", "2", "--epochs", "1", "--out", "out"],
                                       "broken.png"),
    "voc-mask-class-out-of-range": (_voc(mask=np.full((17, 17), 77)), "palette index 77 outside"),
    "voc-mask-wrong-size": (_voc(mask=np.zeros((5, 5))), "mask is 5x5"),
    "voc-split-lists-a-missing-image": (_voc(split="ghost_000001\n"), "no such image"),
    "voc-split-empty": (_voc(split="\n"), "lists no images"),
}
for _id, (_build, _needle) in DATA_CASES.items():
    case("data", _id, _needle)(_build)


# ====================================================================== 8. reproduce arguments
DEG = ["reproduce", "degradation", "--data", "digits", "--depths", "20", "--out", "deg"]
REPRODUCE_CASES = {
    "degradation-epochs-zero": ([*DEG, "--epochs", "0"], "--epochs 0"),
    "degradation-budget-nan": ([*DEG, "--budget-min", "nan"], "--budget-min nan"),
    "degradation-batch-zero": ([*DEG, "--epochs", "1", "--batch-size", "0"], "--batch-size 0"),
    "degradation-lr-nan": ([*DEG, "--epochs", "1", "--lr", "nan"], "--lr nan"),
    "degradation-lr-negative": ([*DEG, "--epochs", "1", "--lr", "-1"], "--lr -1.0"),
    "degradation-threads-negative": ([*DEG, "--epochs", "1", "--threads", "-1"], "--threads -1"),
    "degradation-depths-garbage": ([*DEG[:-4], "--depths", "20,abc", "--epochs", "1"], "depths '20,abc'"),
    "degradation-no-length": (DEG, "say how long"),
    "degradation-note-missing": ([*DEG, "--epochs", "1", "--note", "@nope.txt"], "--note @nope.txt"),
    "render-missing-json": (["reproduce", "degradation", "--render", "nope.json", "--out", "deg"], "--render nope"),
    "cifar-threads-negative": (["reproduce", "cifar", "--model", "resnet20", "--threads", "-1"], "--threads -1"),
    "cifar-seed-negative": (["reproduce", "cifar", "--model", "resnet20", "--seed", "-1"], "--seed -1"),
    "cifar-unknown-model": (["reproduce", "cifar", "--model", "resnet21"], "--model"),
    "cifar-resume-nothing": (["reproduce", "cifar", "--model", "resnet20", "--out", "nowhere", "--resume"],
                             "no checkpoint at"),
}
for _id, (_argv, _needle) in REPRODUCE_CASES.items():
    case("reproduce", _id, _needle)(lambda w, c, a=_argv: a)


@case("reproduce", "render-garbage-json", "--render d.json: not a degradation.json")
def _(w, c):
    Path("d.json").write_text('{"runs": [{"kind": 5}], "depths": "x"}')
    return ["reproduce", "degradation", "--render", "d.json", "--out", "deg"]


# ------------------------------------------------------------------------------------------ the suite's size
CATEGORY_MIN = {"args": 40, "set": 40, "config": 20, "checkpoint": 20, "frozen": 12, "folder": 12, "data": 8,
                "reproduce": 12}


def test_the_suite_is_large_enough():
    counts = collections.Counter(c.category for c in CASES)
    assert {k: counts[k] for k in CATEGORY_MIN} == {k: max(counts[k], v) for k, v in CATEGORY_MIN.items()}, counts
    assert len(CASES) + len(DISK_TARGETS) * len(DISK_CODES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


# ====================================================================== 9. disk faults while training
# (target file, whether the run is new): a fault there must be one line naming the file and its errno, and
# leave every file as it was (the epoch's writes are undone; a new run removes itself); the run then resumes.
DISK_TARGETS = {"checkpoint": ("checkpoint.pt", False), "weights": ("model.safetensors", False),
                "curves": ("learning_curve.png", False), "metrics-append": ("metrics.jsonl", False),
                "config": ("config.json", False), "new-run-marker": (".resnetkit-run", True),
                "new-run-first-checkpoint": ("checkpoint.pt", True)}
DISK_CODES = [errno.ENOSPC, errno.EROFS, errno.EACCES]


def _inject(monkeypatch, name: str, code: int) -> None:
    """Fail the rename onto `name` (every atomic write) and any os.write into a file called `name` (appends)."""
    real_replace, real_write = os.replace, os.write

    def replace(src, dst, *a, **kw):
        if Path(dst).name == name:
            raise OSError(code, os.strerror(code), str(src))
        return real_replace(src, dst, *a, **kw)

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if Path(target).name == name:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("code", DISK_CODES, ids=errno.errorcode.get)
@pytest.mark.parametrize("target", list(DISK_TARGETS))
def test_disk_faults_keep_the_run(target, code, work, capsys, monkeypatch):
    w, tmp, canary = work
    name, new = DISK_TARGETS[target]
    argv = [*CLS[:-1], "run"] if new else ["train", "--out", "run", "--resume"]
    if not new:
        copy("run", w)
    before = hashes(w)
    with monkeypatch.context() as m:
        _inject(m, name, code)
        rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, 2, f"run/{name}", before, w, tmp, canary)
    line = err.strip()
    assert errno.errorcode[code] in line
    assert ("step 3" in line and "resume" in line) if not new else "files were removed" in line, line
    if code == errno.ENOSPC:  # what was kept is enough: the run goes on once the disk has room
        rc, err = run_cli(argv, capsys)
        assert rc == 0, err
        assert (w / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.safetensors"])
def test_disk_fault_keeps_the_weights_of_a_run_going_on(name, work, capsys, monkeypatch):
    """A run that stopped at schedule.max_steps has weights; taking it further and failing at its end must
    leave those weights (and everything else) as they were."""
    w, tmp, canary = work
    copy("early/run", w)
    argv = ["train", "--out", "run", "--resume", "--set", "schedule.max_steps=4"]
    before = hashes(w)
    with monkeypatch.context() as m:
        _inject(m, name, errno.ENOSPC)
        rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, 2, f"run/{name}", before, w, tmp, canary)
    assert "checkpoint at step 2" in err
    rc, err = run_cli(["train", "--out", "run", "--resume"], capsys)
    assert rc == 2 and "it stopped at schedule.max_steps=2 of 4: raise that to go on" in err
    assert run_cli(argv, capsys)[0] == 0


# ====================================================================== 10. what --resume may do
def test_torn_metrics_line_is_dropped_on_resume(work, capsys, caplog):
    w, tmp, canary = work
    run = copy("run", w)
    good = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(good + b'{"epoch": 2, "step": 4, "train_lo')  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="resnetkit.train"):
        rc, err = run_cli(["train", "--out", "run", "--resume"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    text = (run / "metrics.jsonl").read_text()
    assert text.startswith(good.decode()) and "train_lo\n" not in text and text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert left_in(tmp) == []


def test_resume_applies_what_may_change(work, capsys):
    """--threads, run.log_every and schedule.max_steps may change, a repeated saved value is fine, and the
    config.json of the run says what it continued with."""
    w, _, _ = work
    copy("run", w)
    rc, err = run_cli(["train", "--out", "run", "--resume", "--threads", "2", "--lr", "0.1", "--model", "resnet20",
                    "--set", "run.log_every=5", "--set", "schedule.max_steps=4"], capsys)
    assert rc == 0, err
    cfg = json.loads((w / "run" / "config.json").read_text())
    assert (cfg["run"]["threads"], cfg["run"]["log_every"], cfg["optim"]["lr"]) == (2, 5, 0.1)
    assert json.loads((w / "run" / ".resnetkit-run").read_text())["task"] == "classification"


def test_a_new_run_writes_its_marker_first_and_everything_atomically(work, capsys, monkeypatch):
    w, tmp, _ = work
    order = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: (order.append(Path(b).name), real(a, b, *x, **k))[1])
    rc, err = run_cli([*CLS[:-1], "fresh"], capsys)
    assert rc == 0, err
    assert order[0] == ".resnetkit-run" and order[1] == "config.json"
    assert {"checkpoint.pt", "model.safetensors", "learning_curve.png"} <= set(order)
    # The last epoch commits its files with the checkpoint last; nothing half-written is left.
    assert order[-1] == "checkpoint.pt" and order.index("model.safetensors") < len(order) - 1
    names = sorted(p.name for p in (w / "fresh").iterdir())
    assert names == [".resnetkit-run", "checkpoint.pt", "config.json", "learning_curve.png", "metrics.jsonl",
                     "model.safetensors"]
    assert left_in(tmp) == []


def test_a_failed_new_run_leaves_nothing(work, capsys):
    """A non-finite loss before the first checkpoint: one line, and the new folder is gone."""
    w, _, _ = work
    rc, err = run_cli([*CLS[:-1], "deep/er/run", "--lr", "1e30"], capsys)
    assert rc == 2 and "loss became" in err and "files were removed" in err
    assert list(w.iterdir()) == []
