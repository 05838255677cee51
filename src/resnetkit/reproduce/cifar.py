"""The papers' CIFAR-10 recipes as training configs, with the test errors the papers report.

He et al. 2016a (Deep Residual Learning, sec. 4.2): batch 128, SGD momentum 0.9, weight decay 1e-4,
lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k (chosen on a 45k/5k train/val split);
4-pixel zero padding, random 32x32 crop, horizontal flip. ResNet-110 (and 1202) start at lr 0.01
until the training error is below 80% (about 400 iterations), then go back to 0.1.
He et al. 2016b (Identity Mappings, appendix): the same recipe, with the 0.01 warm-up for the first 400
iterations for every CIFAR net; ResNet-1001 gets 4.92% at batch 128, 4.62% at batch 64 (the batch
the authors' released code uses to fit in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from resnetkit.train.config import TrainConfig, resolve

ITERATIONS, MILESTONES = 64_000, (32_000, 48_000)
WARMUP_STEPS, WARMUP_LR = 400, 0.01  # "about 400 iterations" in 2016a; exactly 400 in 2016b

V1 = "He et al. 2016a, Deep Residual Learning, Table 6"
V2 = "He et al. 2016b, Identity Mappings, Table 3/4"


@dataclass(frozen=True)
class CifarRecipe:
    paper: str
    test_err_pct: float  # CIFAR-10 test error the paper reports (best of runs for 2016a's 110: 6.43)
    warmup: bool = False
    batch_64_err_pct: float | None = None  # the error reported at batch 64, where there is one


RECIPES = {
    "resnet20": CifarRecipe(V1, 8.75),
    "resnet32": CifarRecipe(V1, 7.51),
    "resnet44": CifarRecipe(V1, 7.17),
    "resnet56": CifarRecipe(V1, 6.97),
    "resnet110": CifarRecipe(V1, 6.43, warmup=True),
    "resnet1202": CifarRecipe(V1, 7.93, warmup=True),
    "preact_resnet110": CifarRecipe(V2, 6.37, warmup=True),
    "preact_resnet164": CifarRecipe(V2, 5.46, warmup=True),
    "preact_resnet1001": CifarRecipe(V2, 4.92, warmup=True, batch_64_err_pct=4.62),
}


def cifar_config(arch: str, *, data: str = "cifar10", data_dir: str | None = None, batch_size: int = 128,
                 out: str = "runs/cifar", seed: int = 0, threads: int = 0, holdout: int = 0, eval_subset: int = 0,
                 max_steps: int = 0) -> TrainConfig:
    """The paper's recipe for `arch` as a TrainConfig.

    holdout: evaluate on the last N training images instead of the test set (the papers chose 64k on a
    45k/5k split); eval_subset: evaluate on the first N of those only; max_steps: stop after N steps,
    every one at the learning rate of the full 64k-step schedule (0 = run it all)."""
    rec = RECIPES[arch]
    sections = {
        "model": {"arch": arch},
        "data": {"name": data, "data_dir": data_dir, "batch_size": batch_size, "pad": 4, "flip": True, "cutout": 0,
                 "holdout": holdout, "eval_subset": eval_subset},
        # Caffe / fb.resnet.torch decay every parameter, BatchNorm's included.
        "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "wd_norm_and_bias": True,
                  "label_smoothing": 0.0, "ema_decay": 0.0},
        "schedule": {"name": "step", "steps": ITERATIONS, "milestones": list(MILESTONES), "gamma": 0.1,
                     "warmup": "constant", "warmup_lr": WARMUP_LR, "warmup_steps": WARMUP_STEPS if rec.warmup else 0,
                     "max_steps": max_steps},
        "run": {"out": out, "seed": seed, "threads": threads},
    }
    flags = {f"{s}.{k}": v for s, kv in sections.items() for k, v in kv.items()}
    return resolve(None, [], flags)


def paper_error(arch: str, batch_size: int = 128) -> float:
    rec = RECIPES[arch]
    return rec.batch_64_err_pct if batch_size == 64 and rec.batch_64_err_pct is not None else rec.test_err_pct
