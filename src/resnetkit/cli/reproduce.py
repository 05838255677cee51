"""`resnetkit reproduce degradation` and `resnetkit reproduce cifar`: thin wrappers over resnetkit.reproduce."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from resnetkit._helpers import machine_info
from resnetkit.errors import UserError
from resnetkit.reproduce import runner
from resnetkit.reproduce.cifar import ITERATIONS, RECIPES, cifar_config, paper_error
from resnetkit.reproduce.degradation import (
    Recipe,
    check_report_dir,
    checks,
    parse_depths,
    parse_seeds,
    run_degradation,
    summarize,
)
from resnetkit.reproduce.report import command_line, write_cifar, write_degradation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce the ResNet papers' experiments (degradation, CIFAR recipes)")
    rsub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    d = rsub.add_parser("degradation", help="plain vs residual nets of several depths, one recipe (paper Fig. 6)")
    d.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, cifar100 or digits")
    d.add_argument("--data-dir")
    d.add_argument("--depths", default="20,56", help="comma-separated 6n+2 depths (default 20,56)")
    length = d.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs for every net")
    length.add_argument("--budget-min", type=float, metavar="M",
                        help="measure each net's speed, then pick the epochs (same for all) so the runs fit M minutes")
    d.add_argument("--subset", type=int, default=0, metavar="N", help="train on the first N training images")
    d.add_argument("--eval-subset", "--test-subset", dest="eval_subset", type=int, default=2000, metavar="N",
                   help="evaluate on the first N test images each epoch (0 = all; default 2000; data.eval_subset; "
                        "--test-subset is its old spelling)")
    d.add_argument("--train-probe", type=int, default=1000, metavar="N",
                   help="eval-mode error on the first N training images each epoch (0 = off; default 1000)")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=0.1)
    d.add_argument("--warmup-steps", type=int, default=0)
    d.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train without the dataset's pad-and-crop and flip (every net sees the images themselves)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seeds", metavar="LIST", help="comma-separated seeds, e.g. 0,1,2: every net trains once per "
                   "seed (OUT/runs/seedS/ARCH); the report gives mean and spread, and says whether each gap is "
                   "clear of seed noise (more than twice the standard deviation)")
    d.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 is far faster on a busy shared CPU)")
    d.add_argument("--out", default="runs/degradation",
                   help="report folder (new, empty, or this experiment's: finished runs of the same recipe are "
                        "reused); each net trains in OUT/runs/ARCH")
    d.add_argument("--note", default="", help="text (or @FILE) added to the report under 'Notes'")
    d.add_argument("--render", metavar="JSON", help="rewrite the PNG and markdown in --out from a saved "
                   "degradation.json (e.g. with a new --note); trains nothing")
    d.set_defaults(func=cmd_degradation)

    c = rsub.add_parser("cifar", help="train a CIFAR net with its paper's exact recipe (64k iterations)")
    c.add_argument("--model", required=True, choices=sorted(RECIPES), metavar="MODEL",
                   help=f"one of {', '.join(RECIPES)}")
    c.add_argument("--data", default="cifar10", choices=["cifar10", "cifar100"])
    c.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: cache, then download)")
    c.add_argument("--holdout", "--val-split", dest="holdout", type=int, nargs="?", const=5000, default=0,
                   metavar="N", help="hold out the last N training images (default 5000: the papers' 45k/5k split) "
                                     "and evaluate on them instead of the test set (data.holdout; --val-split is its "
                                     "old spelling)")
    c.add_argument("--batch-size", type=int, default=128, choices=[64, 128],
                   help="128 as in the papers; 64 for preact_resnet1001 as in the authors' released code")
    c.add_argument("--max-steps", type=int, default=0, metavar="N",
                   help="stop after N iterations (the schedule is unchanged); to check that it runs")
    c.add_argument("--eval-subset", type=int, default=0, metavar="N", help="evaluate on the first N images only")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--out", help="run directory: a new or empty folder, or with --resume the run to continue "
                                 "(default runs/cifar/MODEL)")
    c.add_argument("--resume", action="store_true",
                   help="continue the run in --out with the same arguments (only --threads and --max-steps may "
                        "change)")
    c.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the paper's figure; train nothing")
    c.set_defaults(func=cmd_cifar)


def _note(text: str) -> str:
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise UserError(f"--note {text}: no such file")
        try:
            return p.read_bytes()[:1 << 20].decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--note {text}: cannot read it as text ({e})") from None
    return text


def _need(ok: bool, flag: str, value, want: str) -> None:
    if not ok:
        raise UserError(f"{flag} {value}: {want}")


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def cmd_degradation(args: argparse.Namespace) -> int:
    if args.render:
        return _render(args)
    if args.epochs is None and args.budget_min is None:
        raise UserError("say how long to train: --epochs N or --budget-min M")
    depths = parse_depths(args.depths)
    for name in ("subset", "eval_subset", "train_probe", "warmup_steps", "threads", "seed"):
        _need(getattr(args, name) >= 0, f"--{name.replace('_', '-')}", getattr(args, name), "must be >= 0")
    if args.epochs is not None:
        _need(0 < args.epochs <= 10**6, "--epochs", args.epochs, "must be a positive number of epochs")
    if args.budget_min is not None:
        _need(_finite(args.budget_min) and 0 < args.budget_min <= 60 * 24 * 366, "--budget-min", args.budget_min,
              "must be a finite, positive number of minutes")
    _need(args.batch_size >= 1, "--batch-size", args.batch_size, "must be >= 1")
    _need(_finite(args.lr) and args.lr > 0, "--lr", args.lr, "must be a finite number > 0")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (args.seed,)
    _note(args.note)  # fail early on a missing file; it is read again at the end, so it can be written meanwhile
    out = Path(args.out)
    check_report_dir(out)
    recipe = Recipe(data=args.data, data_dir=args.data_dir, subset=args.subset, epochs=args.epochs or 0,
                    batch_size=args.batch_size, lr=args.lr, seed=seeds[0], threads=args.threads,
                    warmup_steps=args.warmup_steps, eval_subset=args.eval_subset, train_probe=args.train_probe,
                    augment=args.augment)
    result = run_degradation(recipe, depths, out / "runs", budget_min=args.budget_min or 0.0, command=command_line(),
                             seeds=seeds)
    paths = write_degradation(result, out, _note(args.note))
    print(_degradation_table(result))
    print(f"wrote {paths['png']}, {paths['md']} and {paths['json']}")
    return 0


def _render(args: argparse.Namespace) -> int:
    p = Path(args.render)
    out = Path(args.out)
    check_report_dir(out)
    note = _note(args.note) if args.note else None
    try:
        result = json.loads(p.read_bytes()[:64 << 20].decode("utf-8"))
        result["summary"] = summarize(result["runs"])  # recomputed with the current rules
        result["checks"] = checks(result["runs"])
        table = _degradation_table(result)
        paths = write_degradation(result, out, note if note is not None else str(result.get("note", "")))
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError, IndexError) as e:
        if isinstance(e, OSError) and e.filename and Path(e.filename) != p:
            raise  # writing the report failed: the disk's fault, reported as such
        raise UserError(f"--render {p}: not a degradation.json ({type(e).__name__}: {e})") from None
    print(table)
    print(f"wrote {paths['png']}, {paths['md']} and {paths['json']} (from {p}; nothing trained)")
    return 0


def _degradation_table(result: dict) -> str:
    def cell(st: dict | None) -> str:
        if not st:
            return "-"
        return f"{100 * st['mean']:.2f}%" + (f" ±{100 * st['sd']:.2f}" if st["n"] > 1 else "")

    rows = [f"{'net':<10} {'train err run':>15} {'train err eval':>15} {'test err':>15}"]
    for s in result["summary"]:
        st = s["stats"]
        rows.append(f"{s['arch']:<10} {cell(st.get('train_err')):>15} {cell(st.get('train_eval_err')):>15} "
                    f"{cell(st.get('test_err')):>15}")
    for c in result["checks"]:
        verdict = "NO" if not c["holds"] else {None: "yes", True: "yes, clear of seed noise",
                                               False: "yes, within seed noise"}[c.get("clear")]
        rows.append(f"{c['kind']}-{c['deep']} {c['expected']} than {c['kind']}-{c['shallow']} ({c['metric']}): "
                    f"{verdict}")
    return "\n".join(rows)


def cmd_cifar(args: argparse.Namespace) -> int:
    for name in ("max_steps", "holdout", "eval_subset", "seed", "threads"):
        _need(getattr(args, name) >= 0, f"--{name.replace('_', '-')}", getattr(args, name), "must be >= 0")
    out = args.out or f"runs/cifar/{args.model}"
    cfg = cifar_config(args.model, data=args.data, data_dir=args.data_dir, batch_size=args.batch_size, out=out,
                       seed=args.seed, threads=args.threads, holdout=args.holdout, eval_subset=args.eval_subset,
                       max_steps=args.max_steps)
    rec, err = RECIPES[args.model], paper_error(args.model, args.batch_size)
    source = rec.paper if err == rec.test_err_pct else (f"batch 64, the authors' released code; the paper's "
                                                         f"{rec.test_err_pct:.2f}% is at batch 128")
    paper_line = f"paper: {args.model} {err:.2f}% CIFAR-10 test error after {ITERATIONS} iterations ({source})"
    if args.data != "cifar10":
        paper_line += f"; the papers' figures are for CIFAR-10, not {args.data}"
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        print(f"holdout: {args.holdout or 'off'}; stop after: {args.max_steps or ITERATIONS} steps")
        print(paper_line)
        return 0
    machine, t0 = machine_info(args.threads), time.perf_counter()
    result, _ = runner.run(cfg, resume=args.resume)
    if result.get("interrupted"):
        return result["exit_code"]
    history = runner.read_history(out)  # every epoch, those before a --resume included
    eval_on = f"last {args.holdout} training images" if args.holdout else "test set"
    if args.eval_subset:
        eval_on = f"first {args.eval_subset} of the {eval_on}"
    report = {"arch": args.model, "data": args.data, "paper": rec.paper, "paper_err_pct": err,
              "paper_steps": ITERATIONS, "step": result["step"], "eval_on": eval_on, "final": history[-1],
              "history": history, "config": cfg.to_dict(), "command": command_line(),
              "wall_s": time.perf_counter() - t0, "machine": machine}
    paths = write_cifar(report, Path(out))
    print(f"{args.model}: this run {100 * result['test_err']:.2f}% error on the {eval_on} after {result['step']} "
          f"iterations; {paper_line}")
    print(f"wrote {paths['md']} and {paths['json']}")
    return 0
