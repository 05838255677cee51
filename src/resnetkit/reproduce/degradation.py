"""The degradation experiment (He et al. 2016, sec. 4.2 and Fig. 6): plain vs residual nets of several
depths trained with one recipe, once per seed.

The paper's claim: a deeper *plain* net ends with a HIGHER training error than a shallower one (so it
is an optimisation problem, not overfitting), while with shortcuts the deeper net has the LOWER error.

Training error is recorded two ways every epoch:
  * `train_err`: the running error over the epoch's augmented training batches in train mode, as the
    paper's curves are drawn (what the trainer logs);
  * `train_eval_err`: an eval-mode pass (BatchNorm running statistics, no augmentation) over a fixed
    subset of the training images, which does not lag behind the weights by half an epoch.

With several seeds every net trains once per seed (OUT/seedS/ARCH), the report gives each net's mean and
spread, and a check is "clear" only when the two means differ by more than twice the larger of the two
standard deviations over seeds: a gap inside seed noise is not evidence either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit._helpers import check_output, first_few, machine_info
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError, OutputExistsError, UserError
from resnetkit.models import create_model
from resnetkit.reproduce import runner
from resnetkit.train import rundir
from resnetkit.train.classification import SHORT_RUN_EPOCHS
from resnetkit.train.config import TrainConfig, fill_automatic, resolve

log = logging.getLogger("resnetkit.reproduce")

KINDS = ("plain", "resnet")  # plain{depth} and resnet{depth}: the same layers, without / with shortcuts
CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # 6n+2: the depths that have both a plain and a residual variant


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe for every net: the paper's CIFAR recipe compressed into `epochs`."""

    data: str = "fashion_mnist"
    data_dir: str | None = None
    subset: int = 0  # first N training images (0 = all)
    epochs: int = 0
    batch_size: int = 128
    lr: float = 0.1
    seed: int = 0
    threads: int = 0
    # The paper divides the lr by 10 at 32k and 48k of 64k iterations: at 50% and 75% of the run.
    schedule: str = "step"
    warmup_steps: int = 0
    eval_subset: int = 2000  # evaluate on the first N test images each epoch (0 = all)
    train_probe: int = 1000  # eval-mode pass over the first N training images each epoch (0 = off)
    # The dataset's pad-and-crop and flip. Off, training error measures how well each net fits the images
    # themselves, free of the noise that random crops and flips add to the running error.
    augment: bool = True
    # Pad-and-crop pixels when augmenting; None leaves data.pad unset (the dataset's, or none below the trainer's
    # SHORT_RUN_EPOCHS). run_degradation names the dataset's pad for recipes that short, so augmenting means crops.
    pad: int | None = None

    def config(self, arch: str, out: Path) -> TrainConfig:
        sets = [f"schedule.name={self.schedule}", f"schedule.warmup_steps={self.warmup_steps}"]
        if not self.augment:
            sets += ["data.pad=0", "data.flip=false"]
        elif self.pad is not None:
            sets.append(f"data.pad={self.pad}")
        flags = {"model.arch": arch, "data.name": self.data, "data.data_dir": self.data_dir,
                 "data.subset": self.subset, "data.eval_subset": self.eval_subset,
                 "data.batch_size": self.batch_size, "optim.lr": self.lr,
                 "schedule.epochs": float(self.epochs), "run.seed": self.seed, "run.threads": self.threads,
                 "run.out": str(out / arch)}
        return resolve(None, sets, flags)


def parse_depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise ConfigError(f"depths {text!r}: expected comma-separated integers, e.g. 20,56") from None
    bad = [d for d in depths if d not in CIFAR_DEPTHS]
    if bad or not depths:
        raise ConfigError(f"depths {text!r}: choose from {', '.join(map(str, CIFAR_DEPTHS))} (6n+2 nets with a "
                        "plain and a residual variant)")
    return depths


def _step_seconds(arch: str, in_chans: int, num_classes: int, size: tuple[int, int], batch: int,
                  repeats: int = 3) -> float:
    """Seconds per training step (forward, backward, SGD) on random data, after one untimed step."""
    model = create_model(arch, in_chans=in_chans, num_classes=num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, in_chans, *size), torch.randint(0, num_classes, (batch,))
    for i in range(repeats + 1):
        if i == 1:
            t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / repeats


def plan_epochs(recipe: Recipe, archs: list[str], budget_s: float, train, test, copies: int = 1) -> tuple[int, dict]:
    """The number of epochs (the same for every net) that fits all runs, each net trained `copies` times
    (once per seed), into budget_s of wall time.

    Each net's step time is measured on random data; an evaluation image is costed at a third of a
    training image (forward only). Returns (epochs, {arch: measured step seconds}).
    """
    t0 = time.perf_counter()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    n_train = min(len(train), recipe.subset) if recipe.subset else len(train)
    n_eval = (min(recipe.eval_subset, len(test)) if recipe.eval_subset else len(test)) + min(recipe.train_probe,
                                                                                               n_train)
    b = recipe.batch_size
    step_s = {a: _step_seconds(a, train.in_chans, train.num_classes, train.size, b) for a in archs}
    per_epoch = copies * sum(s * (n_train // b + n_eval / b / 3) for s in step_s.values())
    left = budget_s - (time.perf_counter() - t0) - 5 * len(archs) * copies  # ~5 s per run to load data and save
    epochs = max(1, math.floor(left / per_epoch))
    log.info("budget %.1f min: %s s/step -> %.0f s per epoch of all %d nets -> %d epochs", budget_s / 60,
             {a: round(s, 3) for a, s in step_s.items()}, per_epoch, len(archs), epochs)
    return epochs, step_s


def _finished_with(run_dir: Path, cfg: TrainConfig) -> bool:
    """Does `run_dir` hold a finished run of exactly `cfg`? (Its files are read, never trusted.)"""
    saved = run_dir / "config.json"
    if not ((run_dir / "model.safetensors").is_file() and saved.is_file()):
        return False
    try:
        done = TrainConfig.from_dict(json.loads(saved.read_bytes()[:1 << 20].decode("utf-8")))
    except (OSError, ValueError, RecursionError):  # ConfigError is a ValueError
        return False
    # The run resolved its automatic values (precision) when it started: compare what it was asked to do.
    return done == fill_automatic(done, cfg)


def _train_one(recipe: Recipe, arch: str, out: Path) -> dict:
    cfg = recipe.config(arch, out)
    run_dir = Path(cfg.run.out)
    if _finished_with(run_dir, cfg):
        done = runner.read_history(run_dir)
        log.info("%s: reusing the finished run in %s", arch, run_dir)  # same config: rerunning would repeat it
        return {"history": done, "wall_s": done[-1].get("time_s") if done else None, "reused": True}
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} holds another or an unfinished run; remove it or choose another output folder "
                        "(to reuse the finished runs of a budgeted experiment, give the epochs its report shows)")
    t0 = time.perf_counter()
    result, history = runner.run(cfg, train_probe=recipe.train_probe)
    if result.get("interrupted"):
        raise KeyboardInterrupt
    return {"history": history, "wall_s": time.perf_counter() - t0, "reused": False}


REPORT_FILES = ("degradation.png", "degradation.md", "degradation.json", "runs")  # what a report folder holds


def check_report_dir(folder: Path, known=REPORT_FILES) -> None:
    """Refuse `folder` as the output of a degradation experiment unless it is new, empty, or already one:
    it holds the degradation marker, or (older resnetkit) only the names in `known`. Read-only."""
    folder = Path(folder)
    check_output(folder, overwrite=True)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file, not a folder; choose another output folder")
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    marker = rundir.read_marker(folder)
    ours = (marker or {}).get("kind") == "degradation" or (marker is None and set(names) <= set(known))
    if not ours:
        raise OutputExistsError(f"{folder} is not empty and not a degradation experiment's folder (it holds "
                                f"{first_few(names)}); choose a new or empty output folder, so that nothing in it is "
                                "replaced")


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise ConfigError(f"seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"seeds {text!r}: give one or more seeds >= 0, e.g. 0,1,2")
    return seeds


def run_degradation(recipe: Recipe, depths: tuple[int, ...], out: str | Path, *, budget_min: float = 0.0,
                    command: str = "", seeds: tuple[int, ...] = ()) -> dict:
    """Train plain{d} and resnet{d} for every depth with `recipe`, once per seed (default: recipe.seed
    alone), each in out/ARCH (one seed) or out/seedS/ARCH; returns the results dict (see report). `out` must
    be new, empty or this experiment's folder (check_report_dir): it gets the marker before the first run,
    and a rerun reuses the finished runs of the same recipe."""
    out = Path(out)
    seeds = tuple(seeds) or (recipe.seed,)
    nets = [(k, d, f"{k}{d}") for k in KINDS for d in depths]
    t0 = time.perf_counter()
    machine = machine_info(recipe.threads)  # load average before we add to it
    train, test = load_dataset(recipe.data, recipe.data_dir)  # for the shapes; each run loads its own copy
    step_s = {}
    if recipe.epochs <= 0 and budget_min <= 0:
        raise ConfigError("say how long to train: recipe.epochs or budget_min")
    for *_, arch in nets:  # every value checked before anything is measured or written
        dataclasses.replace(recipe, epochs=max(1, recipe.epochs)).config(arch, out)
    check_report_dir(out, known=[f"{k}{d}" for k in KINDS for d in CIFAR_DEPTHS] + [f"seed{s}" for s in seeds])
    if recipe.epochs <= 0:
        epochs, step_s = plan_epochs(recipe, [a for *_, a in nets], 60 * budget_min, train, test, len(seeds))
        recipe = dataclasses.replace(recipe, epochs=epochs)
    if recipe.augment and recipe.pad is None and recipe.epochs < SHORT_RUN_EPOCHS:
        recipe = dataclasses.replace(recipe, pad=train.pad)  # the dataset's crops, however short the run
    if rundir.read_marker(out) is None:
        rundir.make_dirs(out)
        rundir.write_marker(out, "degradation")
    runs = []
    params = {arch: sum(p.numel() for p in create_model(arch, num_classes=train.num_classes,
                                                        in_chans=train.in_chans).parameters()) for *_, arch in nets}
    for seed in seeds:  # seed by seed: a cut-short experiment has whole seeds to show
        seeded, where = dataclasses.replace(recipe, seed=seed), out if len(seeds) == 1 else out / f"seed{seed}"
        for kind, depth, arch in nets:
            log.info("degradation: training %s, seed %d (%d epochs)", arch, seed, recipe.epochs)
            r = _train_one(seeded, arch, where)
            h = r["history"]
            runs.append({"arch": arch, "kind": kind, "depth": depth, "seed": seed, "params": params[arch],
                         "wall_s": r["wall_s"], "reused": r["reused"],
                         "run_dir": str(where / arch), "history": h, "final": h[-1] if h else {}})
    return {"experiment": "degradation", "paper": "He et al. 2016, Deep Residual Learning, sec. 4.2, Fig. 6",
            "command": command, "recipe": dataclasses.asdict(recipe), "budget_min": budget_min, "seeds": list(seeds),
            "measured_step_s": step_s, "depths": list(depths), "wall_s": time.perf_counter() - t0,
            "machine": machine, "runs": runs, "summary": summarize(runs), "checks": checks(runs),
            "train_err_definitions": {
                "train_err": (f"running error over the epoch's {'augmented ' if recipe.augment else ''}training "
                              "batches, train mode (as the paper)"),
                "train_eval_err": (f"eval-mode pass over the first {recipe.train_probe} training images, "
                                   "no augmentation"),
            }}


def final_values(run: dict, last: int = 3) -> dict[str, float]:
    """A run's final errors, and (one epoch's error is noisy) its training errors' means over the last `last`
    epochs."""
    v = {k: run["final"][k] for k in ("train_err", "train_eval_err", "test_err") if k in run["final"]}
    tail = run.get("history", [])[-last:]
    if len(tail) > 1:
        v.update({f"{k} (mean of last {len(tail)} epochs)": sum(h[k] for h in tail) / len(tail)
                  for k in ("train_err", "train_eval_err") if all(k in h for h in tail)})
    return v


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n, "values": values}


def summarize(runs: list[dict]) -> list[dict]:
    """One row per net: mean, sample standard deviation, min and max over seeds of every final value."""
    by: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["final"]:
            by.setdefault((r["kind"], r["depth"], r.get("arch", f"{r['kind']}{r['depth']}")), []).append(r)
    out = []
    for (kind, depth, arch), rs in by.items():
        vals = [final_values(r) for r in rs]
        keys = [k for k in vals[0] if all(k in v for v in vals)]
        out.append({"arch": arch, "kind": kind, "depth": depth, "params": rs[0].get("params"),
                    "seeds": [r.get("seed") for r in rs], "wall_s": sum(r.get("wall_s") or 0.0 for r in rs),
                    "stats": {k: _stats([v[k] for v in vals]) for k in keys}})
    return out


def checks(runs: list[dict]) -> list[dict]:
    """For consecutive depths: does the deeper plain net end HIGHER, the deeper residual net LOWER?

    Judged on the means over seeds of the final training errors and of their last-3-epoch means. With two or
    more seeds a check is `clear` when the means differ by more than twice the larger standard deviation.
    """
    by = {(s["kind"], s["depth"]): s["stats"] for s in summarize(runs)}
    depths = sorted({r["depth"] for r in runs})
    out = []
    for lo, hi in zip(depths, depths[1:]):
        for kind, want in (("plain", "higher"), ("resnet", "lower")):
            a, b = by.get((kind, lo)), by.get((kind, hi))
            if not a or not b:
                continue
            for key in a:
                if key in b and key.startswith("train"):
                    gap = b[key]["mean"] - a[key]["mean"]
                    holds = gap > 0 if want == "higher" else gap < 0
                    n = min(a[key]["n"], b[key]["n"])
                    clear = bool(holds and abs(gap) > 2 * max(a[key]["sd"], b[key]["sd"])) if n > 1 else None
                    out.append({"kind": kind, "shallow": lo, "deep": hi, "metric": key, "expected": want,
                                "shallow_err": a[key]["mean"], "deep_err": b[key]["mean"],
                                "shallow_sd": a[key]["sd"], "deep_sd": b[key]["sd"], "seeds": n,
                                "holds": bool(holds), "clear": clear})
    return out
