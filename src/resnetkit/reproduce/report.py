"""What a reproduction leaves behind: a Figure-6-style PNG, a markdown report and the raw JSON.

A report carries the exact command, the wall time and the machine (CPU model, cores, load, torch
version), so a number can be judged by where it was measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from resnetkit._helpers import atomic_write_json, atomic_write_text, machine_line
from resnetkit.reproduce.degradation import summarize
from resnetkit.train.report import save_figure


def command_line() -> str:
    return " ".join(["resnetkit", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("resnetkit") else \
        " ".join(sys.argv)


# -- degradation ------------------------------------------------------------------------------


def _curves(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]] | None:
    """(epochs, mean, min, max) over the seeds' runs of `key` in %, on the epochs every run has."""
    n = min(len(r["history"]) for r in runs)
    if n == 0 or not all(key in h for r in runs for h in r["history"][:n]):
        return None
    cols = [[100 * r["history"][i][key] for r in runs] for i in range(n)]
    return ([h["epoch"] for h in runs[0]["history"][:n]], [sum(c) / len(c) for c in cols], [min(c) for c in cols],
            [max(c) for c in cols])


def plot_degradation(result: dict, path: Path) -> None:
    """Two panels, plain | residual: training error dashed, test error solid, one colour per depth; with
    several seeds the lines are means and the shading spans the seeds' lowest to highest value."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    colours = matplotlib.colormaps["tab10"]
    depths = sorted(result["depths"])
    top = 0.0
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain", "ResNet")):
        for i, d in enumerate(depths):
            runs = [r for r in result["runs"] if r["kind"] == kind and r["depth"] == d and r["history"]]
            if not runs:
                continue
            c, name = colours(i), f"{title}-{d}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
            for key, style, lw, label in (("train_err", "--", 1.5, "train (running)"),
                                          ("train_eval_err", ":", 1.2, "train (eval mode)"),
                                          ("test_err", "-", 2.0, "test")):
                curve = _curves(runs, key)
                if curve is None:
                    continue
                ep, mean, lo, hi = curve
                ax.plot(ep, mean, style, color=c, lw=lw, label=f"{name} {label}")
                if len(runs) > 1 and key != "train_eval_err":
                    ax.fill_between(ep, lo, hi, color=c, alpha=0.15, lw=0)
                if key != "train_eval_err":
                    top = max(top, *hi[len(hi) // 4:])
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("error (%)")
    # The first epochs are off the scale for the deep plain nets; the paper's Fig. 6 clips too.
    axes[0].set_ylim(0, min(100, 1.15 * top) if top else 100)
    r = result["recipe"]
    fig.suptitle(f"{r['data']}: {r['subset'] or 'all'} training images, {r['epochs']} epochs, batch "
                 f"{r['batch_size']}, lr {r['lr']} (dashed: training, solid: test)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _pct(x) -> str:
    return f"{100 * x:.2f}" if isinstance(x, float) else "-"


def _cell(stats: dict | None) -> str:
    """mean (+- sd over seeds when there are several) in %."""
    if not stats:
        return "-"
    return _pct(stats["mean"]) + (f" ± {100 * stats['sd']:.2f}" if stats["n"] > 1 else "")


def _verdict(c: dict) -> str:
    if not c["holds"]:
        return "**does NOT hold**"
    if c.get("clear") is None:
        return "**holds**"
    gap, two_sd = 100 * abs(c["deep_err"] - c["shallow_err"]), 200 * max(c["shallow_sd"], c["deep_sd"])
    return (f"**holds, clear of seed noise** (gap {gap:.2f} points > 2 sd = {two_sd:.2f})" if c["clear"] else
            f"**holds on the means, within seed noise** (gap {gap:.2f} points <= 2 sd = {two_sd:.2f})")


def _wall_line(result: dict) -> str:
    runs = result["runs"]
    reused = sum(bool(r.get("reused")) for r in runs)
    line = f"- wall time: {result['wall_s'] / 60:.1f} min for all {len(runs)} runs"
    if reused:  # their training happened in earlier invocations: the table's wall column has their own times
        trained = sum(r.get("wall_s") or 0.0 for r in runs)
        line = (f"- wall time: {result['wall_s'] / 60:.1f} min for this invocation, which reused {reused} of the "
                f"{len(runs)} runs from earlier ones; the runs' own training time adds up to {trained / 60:.1f} min")
    return line + (f" (budget {result['budget_min']} min)" if result["budget_min"] else "")


def degradation_markdown(result: dict, png_name: str, note: str = "") -> str:
    r, m = result["recipe"], result["machine"]
    seeds = result.get("seeds") or [r["seed"]]
    summary = result.get("summary") or summarize(result["runs"])
    several = len(seeds) > 1
    lines = [
        "# Degradation: plain vs residual nets (He et al. 2016, Fig. 6)",
        "",
        f"![training and test error per epoch]({png_name})",
        "",
        ("Same recipe for every net, each trained once per seed (" + ", ".join(map(str, seeds)) + "): the table "
         "gives mean ± sample standard deviation over the seeds, the figure's lines are means and its shading "
         "spans the seeds' lowest to highest value. " if several else "Same recipe and seed for every net. ")
        + "Training error is recorded two ways: **running** = the error on "
        f"the epoch's {'augmented ' if r.get('augment', True) else ''}training batches in train mode (how the "
        f"paper draws its curves{'' if r.get('augment', True) else '; this run trains without augmentation'}), "
        "**eval** = "
        f"an eval-mode pass over the first {r['train_probe']} training images without augmentation. "
        f"Test error is on the first {r.get('eval_subset', r.get('test_subset')) or 'all'} test images.",
        "",
        "| net | depth | params | train err running (%) | train err eval (%) | test err (%) | wall (s"
        + (", all seeds) |" if several else ") |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        st = s["stats"]
        wall = f"{s['wall_s']:.0f}" if s.get("wall_s") else "-"
        lines.append(f"| {s['arch']} | {s['depth']} | {s['params']:,} | {_cell(st.get('train_err'))} | "
                     f"{_cell(st.get('train_eval_err'))} | {_cell(st.get('test_err'))} | {wall} |")
    lines += ["", "## The paper's claim, checked at the end of training"
              + (f" (means over {len(seeds)} seeds)" if several else ""), ""]
    for c in result["checks"]:
        net = "plain" if c["kind"] == "plain" else "residual"
        lines.append(f"- {net}-{c['deep']} ends {c['expected']} than {net}-{c['shallow']} ({c['metric']}: "
                     f"{_pct(c['deep_err'])}% vs {_pct(c['shallow_err'])}%): {_verdict(c)}")
    lines += [
        "",
        "## Recipe",
        "",
        f"- data: {r['data']}, first {r['subset'] or 'all'} training images, {r['epochs']} epochs, batch "
        f"{r['batch_size']}, SGD momentum 0.9, weight decay 1e-4, lr {r['lr']} ({r['schedule']} schedule: "
        f"divided by 10 at 50% and 75% of the run, as 32k/48k of 64k iterations in the paper), warm-up steps "
        f"{r['warmup_steps']}, " + (f"seeds {', '.join(map(str, seeds))}" if several else f"seed {r['seed']}"),
        "",
        "## How it was run",
        "",
        "```",
        result["command"],
        "```",
        "",
        _wall_line(result),
        f"- {machine_line(m)}",
    ]
    if result.get("measured_step_s"):
        lines.append("- measured step time before planning (s/step, batch {}): {}".format(
            r["batch_size"], ", ".join(f"{a} {s:.3f}" for a, s in result["measured_step_s"].items())))
    if note:
        lines += ["", "## Notes", "", note.strip()]
    return "\n".join(lines) + "\n"


def write_degradation(result: dict, out: Path, note: str = "") -> dict[str, Path]:
    """degradation.png, degradation.md and degradation.json in `out`."""
    paths = {k: out / f"degradation.{k}" for k in ("png", "md", "json")}
    text = degradation_markdown(result, paths["png"].name, note)  # a malformed result fails before any write
    data = json.dumps({**result, "note": note}, indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    plot_degradation(result, paths["png"])
    atomic_write_text(paths["md"], text)
    atomic_write_text(paths["json"], data)
    return paths


# -- CIFAR recipes ------------------------------------------------------------------------------


def cifar_markdown(result: dict) -> str:
    f = result["final"]
    lines = [
        f"# {result['arch']} on {result['data']} ({result['paper']})",
        "",
        "| | test error (%) | steps |",
        "|---|---:|---:|",
        f"| paper | {result['paper_err_pct']:.2f} | {result['paper_steps']} |",
        f"| this run ({result['eval_on']}) | {_pct(f.get('test_err'))} | {f.get('step', '-')} |",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- wall time: {result['wall_s'] / 60:.1f} min",
        f"- {machine_line(result['machine'])}",
    ]
    if result["step"] < result["paper_steps"]:
        lines.append(f"- stopped after {result['step']} of the recipe's {result['paper_steps']} steps "
                     "(schedule.max_steps): the error is not comparable with the paper's")
    return "\n".join(lines) + "\n"


def write_cifar(result: dict, out: Path) -> dict[str, Path]:
    paths = {"md": out / "reproduce.md", "json": out / "reproduce.json"}
    text = cifar_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["md"], text)
    atomic_write_json(paths["json"], result)
    return paths
