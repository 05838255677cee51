"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks"; fastai's
lr_find): train the run's own model on its own data while the learning rate grows geometrically from `start`
to `end`, record the smoothed loss, stop once it passes 4x its best, and suggest the rate where the smoothed
loss falls fastest (the steepest descent of loss against log lr), the usual reading of the plot.

It trains a throwaway copy: nothing of the run folder is written; the plot and the figures go to `out`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from resnetkit._helpers import atomic_write_json, check_output
from resnetkit.data.loader import epoch_batches
from resnetkit.errors import ConfigError
from resnetkit.train.prepare import PreparedRun
from resnetkit.train.report import save_figure, smoothed
from resnetkit.train.trainer import Trainer

DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its best


def lr_find(run: PreparedRun, out: str | Path, *, start: float = 1e-6, end: float = 10.0, steps: int = 100,
            overwrite: bool = False) -> dict:
    """Run the range test on `run`; write OUT/lr_find.png and OUT/lr_find.json; return the figures
    {"lr", "loss" (smoothed), "suggestion", "min_loss_lr", "steps"}."""
    if not (0 < start < end) or steps < 5:
        raise ConfigError(f"lr_find: need 0 < start < end and at least 5 steps (got {start}, {end}, {steps})")
    out = Path(out)
    png, js = out / "lr_find.png", out / "lr_find.json"
    for p in (png, js):
        check_output(p, overwrite=overwrite)
    t = Trainer(run)
    t.train_model.train()
    lrs = np.geomspace(start, end, steps)
    seen, raw, epoch = [], [], 0
    while len(seen) < steps:
        t.task.begin_epoch(epoch, 0, t.d)
        for i, idx in epoch_batches(len(t.task.train_set), run.cfg.data.batch_size, run.cfg.run.seed, epoch):
            if len(seen) == steps:
                break
            sums = t.train_step(i, idx, lr=float(lrs[len(seen)]))
            loss = t.task.train_metrics(sums.cpu())["train_loss"]
            seen.append(float(lrs[len(seen)]))
            raw.append(loss)
            curve = smoothed(raw, 0.9)
            if not math.isfinite(loss) or curve[-1] > DIVERGED * min(curve):
                break
        else:
            epoch += 1
            continue
        break
    curve = smoothed(raw, 0.9)
    logs = np.log10(seen)
    slope = np.gradient(np.array(curve), logs) if len(curve) > 2 else np.zeros(len(curve))
    # the steepest fall, ignoring the last few points where the loss turns up
    usable = max(1, len(curve) - 3)
    best = int(np.argmin(slope[:usable]))
    result = {"lr": seen, "loss": curve, "raw_loss": raw, "suggestion": seen[best],
              "min_loss_lr": seen[int(np.argmin(curve))], "steps": len(seen)}
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.plot(seen, raw, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(seen, curve, color="tab:blue", label="smoothed")
    ax.axvline(result["suggestion"], color="tab:red", linestyle="--",
               label=f"suggestion {result['suggestion']:.2g} (steepest fall)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title=f"lr range test: {run.cfg.model.arch if run.cfg.task == 'classification' else run.cfg.task}")
    top = min(max(curve) * 1.1, DIVERGED * min(curve) * 1.5)
    ax.set_ylim(min(raw) * 0.9 if min(raw) > 0 else 0, top)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    atomic_write_json(js, result)
    return result
