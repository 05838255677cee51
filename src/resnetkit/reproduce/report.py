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
from resnetkit.train.report import save_figure


def command_line() -> str:
    return " ".join(["resnetkit", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("resnetkit") else \
        " ".join(sys.argv)


# -- degradation ------------------------------------------------------------------------------


def plot_degradation(result: dict, path: Path) -> None:
    """Two panels, plain | residual: training error dashed, test error solid, one colour per depth."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    colours = matplotlib.colormaps["tab10"]
    depths = sorted(result["depths"])
    top = 0.0
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain", "ResNet")):
        for i, d in enumerate(depths):
            run = next((r for r in result["runs"] if r["kind"] == kind and r["depth"] == d), None)
            if run is None or not run["history"]:
                continue
            h = run["history"]
            ep = [r["epoch"] for r in h]
            c = colours(i)
            name = f"{title}-{d}"
            ax.plot(ep, [100 * r["train_err"] for r in h], "--", color=c, lw=1.5, label=f"{name} train (running)")
            if "train_eval_err" in h[0]:
                ax.plot(ep, [100 * r["train_eval_err"] for r in h], ":", color=c, lw=1.2,
                        label=f"{name} train (eval mode)")
            ax.plot(ep, [100 * r["test_err"] for r in h], "-", color=c, lw=2, label=f"{name} test")
            top = max(top, *(100 * r["test_err"] for r in h[len(h) // 4:]),
                      *(100 * r["train_err"] for r in h[len(h) // 4:]))
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


def degradation_markdown(result: dict, png_name: str, note: str = "") -> str:
    r, m = result["recipe"], result["machine"]
    lines = [
        "# Degradation: plain vs residual nets (He et al. 2016, Fig. 6)",
        "",
        f"![training and test error per epoch]({png_name})",
        "",
        "Same recipe and seed for every net. Training error is recorded two ways: **running** = the error on "
        "the epoch's augmented training batches in train mode (how the paper draws its curves), **eval** = "
        f"an eval-mode pass over the first {r['train_probe']} training images without augmentation. "
        f"Test error is on the first {r['test_subset'] or 'all'} test images.",
        "",
        "| net | depth | params | train err running (%) | train err eval (%) | test err (%) | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        f = run["final"]
        wall = f"{run['wall_s']:.0f}" if run["wall_s"] is not None else "-"
        lines.append(f"| {run['arch']} | {run['depth']} | {run['params']:,} | {_pct(f.get('train_err'))} | "
                     f"{_pct(f.get('train_eval_err'))} | {_pct(f.get('test_err'))} | {wall} |")
    lines += ["", "## The paper's claim, checked at the end of training", ""]
    for c in result["checks"]:
        verdict = "holds" if c["holds"] else "does NOT hold"
        net = "plain" if c["kind"] == "plain" else "residual"
        lines.append(f"- {net}-{c['deep']} ends {c['expected']} than {net}-{c['shallow']} ({c['metric']}: "
                     f"{_pct(c['deep_err'])}% vs {_pct(c['shallow_err'])}%): **{verdict}**")
    lines += [
        "",
        "## Recipe",
        "",
        f"- data: {r['data']}, first {r['subset'] or 'all'} training images, {r['epochs']} epochs, batch "
        f"{r['batch_size']}, SGD momentum 0.9, weight decay 1e-4, lr {r['lr']} ({r['schedule']} schedule: "
        f"divided by 10 at 50% and 75% of the run, as 32k/48k of 64k iterations in the paper), warm-up steps "
        f"{r['warmup_steps']}, seed {r['seed']}",
        "",
        "## How it was run",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- wall time: {result['wall_s'] / 60:.1f} min for all {len(result['runs'])} runs"
        + (f" (budget {result['budget_min']} min)" if result["budget_min"] else ""),
        f"- machine: {machine_line(m)}",
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
        f"- machine: {machine_line(result['machine'])}",
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
