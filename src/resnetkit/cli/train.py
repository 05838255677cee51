"""`resnetkit train`: a thin wrapper over resnetkit.train.train (classification and segmentation)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from resnetkit.data.sources import STREAM_MODES
from resnetkit.errors import ConfigError, MissingFileError, UserError
from resnetkit.models import TASKS
from resnetkit.train import RESUMABLE, RunRequest, prepare, train
from resnetkit.train.config import AMP_MODES, OPTIMIZERS, OUTPUT_STRIDES, SEG_HEADS, SEG_LOSSES
from resnetkit.train.lr_find import lr_find
from resnetkit.train.prepare import dry_run
from resnetkit.train.recipes import list_recipes

TRAIN_EXAMPLES = """\
examples:
  resnetkit train --model resnet20 --data fashion-mnist --budget-min 5 --out runs/fm
  resnetkit train --model resnet110 --data cifar10 --set schedule.name=step --set schedule.steps=64000 \\
      --set schedule.milestones=[32000,48000] --set schedule.warmup=constant --set schedule.warmup_steps=400
  resnetkit train --out runs/fm --resume          # continue exactly where the checkpoint left off
  resnetkit train --out runs/fm --resume --threads 4   # only where it runs may change on --resume
  torchrun --nproc_per_node 2 -m resnetkit train --data cifar10 --epochs 160 --out runs/c10
  resnetkit train --model resnet50 --data imagenet:/data/ILSVRC2012 --workers 8 --epochs 90 --out runs/in1k
  torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
      -m resnetkit train --model resnet50 --data shards:'/data/in1k/train-{{000000..000146}}.tar' --out runs/in1k
  resnetkit train --task segmentation --data data/shapes --budget-min 15 --out runs/seg   # settings from the data
  resnetkit train --task segmentation --data data/shapes --head deeplabv3plus --loss ohem --budget-min 15 \\
      --out runs/seg2                                  # any automatic setting can be given instead

config sections for --set / --config: model, data, optim, schedule, run (RUN_DIR/config.json lists them all;
a config file may also say task = "segmentation")

run directory (--out): a new run starts only in a new or empty folder and marks it with .resnetkit-run;
a folder with that marker and a checkpoint is continued with --resume; any other folder is refused, so no
file of yours is replaced, deleted or appended to.
--resume goes on with the run's saved config. Only these may change (--threads, --data-dir, --out, --set):
  {resumable}
any other flag, --set or --config value that differs from the saved one is refused by name.
""".format(resumable=", ".join(RESUMABLE))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classification or segmentation model (torchrun for several processes)",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS,
                   help="default classification (or the --config file's task); segmentation: --data is a "
                        "VOC-layout folder (see `resnetkit data make-shapes`)")
    p.add_argument("--model", help="registered model name, e.g. resnet20 (segmentation: the backbone; default "
                                   "resnet20, segmentation auto)")
    p.add_argument("--data", help="fashion-mnist, mnist, cifar10, cifar100, digits, folder:PATH (ROOT/CLASS/IMAGE, "
                                  "optional ROOT/train + ROOT/val), imagenet:PATH (ILSVRC-2012 layout) or "
                                  "shards:'DIR/train-{000000..000099}.tar' (`resnetkit data pack`); segmentation: a "
                                  "VOC-layout or pairs-layout folder")
    p.add_argument("--val", metavar="PATH", help="classification: a separate validation folder or shard pattern "
                                                 "(data.val_path)")
    p.add_argument("--stream", choices=STREAM_MODES,
                   help="classification: read images lazily in DataLoader workers (on), hold them in memory (off), "
                        "or choose by the data's size (default auto; the log says which; data.stream)")
    p.add_argument("--workers", type=int, metavar="N", help="DataLoader workers for streamed data (default 4; "
                                                           "data.workers)")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: system folder, cache, download)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="train for N epochs")
    length.add_argument("--budget-min", type=float, metavar="M",
                        help="fit the whole schedule (warm-up and decay) into M minutes of wall time")
    p.add_argument("--out", help="run directory: a new or empty folder, or with --resume the run to continue "
                                 "(default runs/train, segmentation runs/segment)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its saved config (see below)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (0 = torch's default; run.threads)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 128, segmentation auto)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1, segmentation auto)")
    p.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only")
    p.add_argument("--amp", choices=AMP_MODES,
                   help="autocast precision (default auto: bf16 where the device computes it natively, else none; "
                        "fp16: CUDA, with a gradient scaler); the run log and config.json say what auto chose")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default auto: timed at start-up on a CPU, by capability on a GPU)")
    p.add_argument("--init", metavar="FILE_OR_TAG",
                   help="start from these weights: one of our weights files or a pretrained tag (a new classifier "
                        "when the class count differs; segmentation: the backbone, as --backbone-weights)")
    p.add_argument("--freeze-stages", type=int, metavar="N",
                   help="freeze the stem and stages 1..N, BatchNorm statistics too (0 none; all stages: linear probe)")
    p.add_argument("--head-lr-mult", type=float, metavar="X", help="the classifier's learning rate is X times the rest")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd (optim.name)")
    p.add_argument("--recipe", metavar="NAME", help="start from a shipped recipe (`resnetkit recipes` lists them); "
                                                    "--config, flags and --set override it, in that order")
    p.add_argument("--keep-best", metavar="METRIC", help="keep model_best.safetensors by this evaluation metric "
                   "(test_err, test_loss, val_miou, ...; default auto: on a validation split only; none; "
                   "run.keep_best)")
    p.add_argument("--early-stop", type=int, metavar="N",
                   help="stop after N evaluations without improvement of --keep-best (run.early_stop)")
    p.add_argument("--clip-grad-norm", type=float, metavar="X", help="clip the gradients' global L2 norm to X "
                                                                    "(optim.clip_grad_norm)")
    p.add_argument("--log", metavar="tensorboard,mlflow", help="report the run to these trackers (run.log): "
                   "TensorBoard event files in RUN/tensorboard, MLflow in sqlite:///RUN/mlflow.db (or run.mlflow_uri)")
    p.add_argument("--class-weights", metavar="auto|none|FILE", help="classification: per-class loss weights, auto "
                   "= inverse frequency N/(K n_k), or a JSON list (data.class_weights)")
    p.add_argument("--lr-find", metavar="DIR", help="instead of training: the learning-rate range test (Smith 2017) "
                   "on this run's model and data; writes DIR/lr_find.png and lr_find.json and prints a suggestion")
    p.add_argument("--dry-run", action="store_true", help="prepare the run (data read, automatic choices made), print "
                   "the resolved config and the automatic choices with their reasons as JSON, and exit")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute each residual unit's activations in the backward pass: less memory, more time "
                        "(run.grad_checkpointing)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms (bitwise-repeatable runs and resumes)")
    p.add_argument("--strict", action="store_true", default=None, help="image folders: fail on unreadable images")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of sections, e.g. [optim] lr = 0.2")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=0.2 --set optim.grad_accum=2")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    r = sub.add_parser("recipes", help="list the training recipes shipped with resnetkit (train --recipe NAME)")
    r.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Segmentation-only flags of `resnetkit train` (used with --task segmentation)."""
    g = p.add_argument_group("segmentation (--task segmentation)")
    # Every default below is "auto": chosen from the data and the backbone at the start of the run, printed
    # there with its reason, and written into RUN_DIR/config.json (resnetkit.train.seg_defaults).
    g.add_argument("--head", choices=SEG_HEADS,
                   help="slim: 1x1 logits; aspp: DeepLabv3; deeplabv3plus: ASPP + decoder (default auto: slim on a "
                        "CIFAR-style backbone, aspp on an ImageNet one)")
    g.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES,
                   help="backbone output stride (default auto: the coarsest leaving >= 16 feature cells)")
    g.add_argument("--backbone-weights", metavar="FILE_OR_TAG",
                   help="classification weights file or pretrained tag for the backbone (its logits are dropped)")
    g.add_argument("--freeze-bn", action="store_true", default=None,
                   help="keep the backbone's BatchNorm statistics frozen (small-batch fine-tuning)")
    g.add_argument("--crop-size", type=int, help="training crop (default auto: stride*k+1 <= the images' median side)")
    g.add_argument("--min-scale", type=float, help="random scale range (default auto: 0.75 .. 1.25 for crops holding "
                                                   "the whole image, else 0.5 .. 2.0)")
    g.add_argument("--max-scale", type=float)
    g.add_argument("--loss", choices=SEG_LOSSES,
                   help="cross-entropy: plain, class-weighted (inverse sqrt pixel share) or OHEM (default auto)")


# argparse dest -> config key, or a name resnetkit.train.prepare.ALIASES maps to the run's task's key
FLAGS = {"epochs": "schedule.epochs", "budget_min": "schedule.budget_min", "out": "run.out", "seed": "run.seed",
         "batch_size": "data.batch_size", "lr": "optim.lr", "subset": "data.subset", "amp": "run.amp",
         "channels_last": "run.channels_last", "compile": "run.compile", "deterministic": "run.deterministic",
         "grad_checkpointing": "run.grad_checkpointing",
         "threads": "run.threads", "head_lr_mult": "optim.head_lr_mult", "optimizer": "optim.name",
         "log": "run.log", "keep_best": "run.keep_best", "early_stop": "run.early_stop",
         "clip_grad_norm": "optim.clip_grad_norm",
         "model": "model", "data": "data", "init": "init",
         # classification
         "data_dir": "data.data_dir", "strict": "data.strict", "freeze_stages": "model.freeze_stages",
         "val": "data.val_path", "stream": "data.stream", "workers": "data.workers",
         "class_weights": "data.class_weights",
         # segmentation
         "head": "model.head", "output_stride": "model.output_stride", "backbone_weights": "model.backbone_weights",
         "freeze_bn": "model.freeze_bn", "crop_size": "data.crop_size", "min_scale": "data.min_scale",
         "max_scale": "data.max_scale", "loss": "model.loss"}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def cmd_train(args: argparse.Namespace) -> int:
    flags = _flags(args)
    request = RunRequest(task=args.task, recipe=args.recipe, config=args.config, overrides=tuple(args.set),
                         flags={key: value for key, (value, _) in flags.items()}, resume=args.resume, out=args.out)
    try:
        if args.dry_run:
            print(json.dumps(dry_run(request), indent=2))
            return 0
        if args.lr_find:
            found = lr_find(prepare(request), args.lr_find)
            print(f"suggested learning rate {found['suggestion']:.3g} (steepest fall of the smoothed loss; lowest "
                  f"loss at {found['min_loss_lr']:.3g}; {found['steps']} steps); wrote {args.lr_find}/lr_find.png "
                  f"and lr_find.json; train with --lr {found['suggestion']:.3g}")
            return 0
        result = train(prepare(request))
    except (ConfigError, MissingFileError) as e:
        named = {"task": (args.task, f"--task {args.task}"), "recipe": (args.recipe, f"--recipe {args.recipe}"),
                 **flags}
        raise _named(e, named) from None
    if result.get("interrupted") and os.environ.get("RANK", "0") == "0":
        print(f"resnetkit: stopped; continue with `resnetkit train --out {result['run_dir']} --resume`",
              file=sys.stderr)
    return result["exit_code"]


def _flags(args: argparse.Namespace) -> dict[str, tuple]:
    """The flags given, as {config key or alias: (value, "--flag value")}."""
    given = {}
    for dest, key in FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            label = {True: _flag(dest), False: "--no-" + _flag(dest)[2:]}.get(value) if isinstance(value, bool) \
                else f"{_flag(dest)} {value}"  # False only from --no-channels-last
            given[key] = (value, label)
    if args.budget_min is not None:  # a budget replaces any length in epochs from a config file
        given["schedule.epochs"] = (0.0, f"--budget-min {args.budget_min}")
    return given


def _named(e: UserError, flags: dict[str, tuple]) -> UserError:
    """`e` with the origins of its values named as the command line wrote them: `--config FILE`,
    `--set KEY=VALUE`, or the flag (the library names config files and keys, never flags)."""
    origins = getattr(e, "origins", ())
    if not origins:
        return e
    labels = []
    for o in origins:
        if o.kind == "file":
            labels.append(f"--config {o.short()}")
        elif o.kind == "recipe":
            labels.append(f"--recipe {o.short()}")
        elif o.kind == "override":
            labels.append(f"--set {o.short()}")
        elif o.text in flags:
            labels.append(flags[o.text][1])
    named = type(e)(f"{', '.join(dict.fromkeys(labels))}: {e.detail}" if labels else str(e))
    named.detail, named.keys, named.origins = e.detail, getattr(e, "keys", ()), origins
    return named
