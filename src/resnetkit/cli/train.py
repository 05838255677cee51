"""`resnetkit train`, `resnetkit eval`, `resnetkit predict`: thin wrappers over resnetkit.train."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from resnetkit.cli import segment
from resnetkit.errors import UserError

TRAIN_EXAMPLES = """\
examples:
  resnetkit train --model resnet20 --data fashion_mnist --budget-min 5 --out runs/fm
  resnetkit train --model resnet110 --data cifar10 --set schedule.name=step --set schedule.steps=64000 \\
      --set schedule.milestones=[32000,48000] --set schedule.warmup=constant --set schedule.warmup_steps=400
  resnetkit train --out runs/fm --resume          # continue exactly where the checkpoint left off
  torchrun --nproc_per_node 2 -m resnetkit train --data cifar10 --epochs 160 --out runs/c10

config sections for --set / --config: model, data, optim, schedule, run (RUN_DIR/config.json lists them all)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on an in-memory dataset (torchrun for several processes)",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name, e.g. resnet20 (default resnet20)")
    p.add_argument("--data", help="fashion_mnist, mnist, cifar10, cifar100, digits, or folder:PATH")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: system folder, cache, download)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="train for N epochs")
    length.add_argument("--budget-min", type=float, metavar="M",
                        help="fit the whole schedule (warm-up and decay) into M minutes of wall time")
    p.add_argument("--out", help="run directory (default runs/train)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--batch-size", type=int, help="global batch size (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1)")
    p.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only")
    p.add_argument("--amp", choices=["none", "bf16"], help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms (bitwise-repeatable runs and resumes)")
    p.add_argument("--strict", action="store_true", default=None, help="image folders: fail on unreadable images")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of sections, e.g. [optim] lr = 0.2")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=0.2 --set schedule.name=step")
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification",
                   help="segmentation: --data is a VOC-layout folder (see `resnetkit data make-shapes`)")
    segment.add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and a confusion matrix for a weights file")
    p.add_argument("--weights", required=True, help="a model.safetensors written by `resnetkit train`")
    p.add_argument("--data", required=True, help="dataset whose test split to evaluate (see train --data)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="folder for eval.json and confusion_matrix.png (default: next to the weights)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--backend", default="eager", help="eager (default), channels_last, compile or onnxruntime")
    segment.add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify images with a weights file, using its own preprocessing")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True)
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--backend", default="eager", help="eager (default), channels_last, compile or onnxruntime")
    p.add_argument("--out", metavar="FILE.csv|FILE.jsonl",
                   help="stream rows to a CSV or JSONL file instead of printing (large folders: DataLoader "
                        "workers decode, a progress bar shows the rate)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes with --out (default 2)")
    p.set_defaults(func=cmd_predict)


# -- train ---------------------------------------------------------------------------------

FLAGS = {"model": "model.arch", "data": "data.name", "data_dir": "data.data_dir", "epochs": "schedule.epochs",
         "budget_min": "schedule.budget_min", "out": "run.out", "seed": "run.seed", "batch_size": "data.batch_size",
         "lr": "optim.lr", "subset": "data.subset", "amp": "run.amp", "channels_last": "run.channels_last",
         "compile": "run.compile", "deterministic": "run.deterministic", "strict": "data.strict"}


def cmd_train(args: argparse.Namespace) -> int:
    from resnetkit.train import TrainConfig, resolve, train
    from resnetkit.train.config import apply_nested

    if args.task == "segmentation":
        return segment.cmd_train_segmentation(args)
    flags = {dotted: getattr(args, name) for name, dotted in FLAGS.items()}
    if args.resume:
        # The run continues with the config saved in its checkpoint; only --out is needed.
        cfg = apply_nested(TrainConfig(), {"run": {"out": args.out or TrainConfig().run.out}})
    else:
        if args.budget_min is not None:
            flags["schedule.epochs"] = 0.0
        cfg = resolve(args.config, args.set, flags)
    return train(cfg, resume=args.resume)["exit_code"]


# -- eval ----------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    if segment.is_segmentation_weights(args.weights):
        return segment.cmd_eval_segmentation(args)
    import dataclasses

    import torch

    from resnetkit.data import load_dataset
    from resnetkit.train import report
    from resnetkit.train.evaluate import evaluate
    from resnetkit.weights.io import load

    model = load(args.weights, map_location="cuda" if torch.cuda.is_available() else "cpu")
    pre = model.preprocessing or {}
    size = (pre.get("size") or [32])[0]
    _, test = load_dataset(args.data, args.data_dir, image_size=size, channels=1 if pre.get("grayscale") else 3)
    names = model.class_names or test.class_names
    if len(names) != test.num_classes:
        raise UserError(f"{args.weights} predicts {len(names)} classes but {args.data} has {test.num_classes}")
    if pre.get("mean"):  # normalise as the model was trained, not with the dataset's own statistics
        test = dataclasses.replace(test, mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    from resnetkit.export.backends import make_backend

    run = make_backend(args.backend, model, example=torch.randn(2, test.in_chans, *test.size))
    ev = evaluate(run, test, batch_size=args.batch_size)
    cm = ev["confusion"].numpy()
    per_class = {n: float(cm[i, i] / max(1, cm[i].sum())) for i, n in enumerate(names)}
    out = Path(args.out) if args.out else Path(args.weights).parent
    out.mkdir(parents=True, exist_ok=True)
    report.plot_confusion(cm, names, out / "confusion_matrix.png")
    result = {"weights": str(args.weights), "data": args.data, "n": ev["n"], "top1": ev["top1"], "top5": ev["top5"],
              "loss": ev["loss"], "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
              "class_names": names}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.data} test: {ev['n']} images  top-1 {100 * ev['top1']:.2f}%  top-5 {100 * ev['top5']:.2f}%  "
          f"loss {ev['loss']:.4f}")
    width = max(len(n) for n in names)
    for n, acc in per_class.items():
        print(f"  {n:<{width}}  {100 * acc:6.2f}%")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion_matrix.png'}")
    return 0


# -- predict -------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    if segment.is_segmentation_weights(args.weights):
        raise UserError(f"{args.weights}: a segmentation model; use `resnetkit segment IMAGE... --weights FILE -o DIR`")
    import torch
    from PIL import UnidentifiedImageError

    from resnetkit.weights.io import load
    from resnetkit.weights.preprocess import preprocess

    if args.out:
        from resnetkit.infer import predict_folder

        r = predict_folder(args.weights, args.inputs, args.out, backend=args.backend, top_k=args.top_k,
                           workers=args.workers, progress=sys.stderr.isatty())
        print(f"wrote {r['images']} rows to {r['out']} ({r['failed']} unreadable)")
        return 0
    model = load(args.weights)
    pre = model.preprocessing
    if not pre:
        raise UserError(f"{args.weights}: no preprocessing metadata; save it with save_weights(preprocessing=...)")
    from resnetkit.data.folder import collect_images

    files = collect_images(args.inputs)
    try:  # the file's own recipe: resize/crop/scale as its publisher (or our trainer) did
        x = torch.stack([preprocess(f, pre) for f in files])  # (N, C, H, W)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image: {e}") from e
    from resnetkit.export.backends import make_backend

    with torch.no_grad():
        probs = make_backend(args.backend, model, example=x[:2])(x).float().softmax(dim=1)
    k = min(args.top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    names = model.class_names or [str(i) for i in range(probs.shape[1])]
    rows = [{"image": str(f), "predictions": [{"class": names[i], "index": int(i), "prob": float(p)}
                                              for p, i in zip(ps.tolist(), ix.tolist())]}
            for f, ps, ix in zip(files, top_p, top_i)]
    _print_predictions(rows, args.format)
    return 0


def _print_predictions(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["image", "rank", "class", "index", "prob"])
        for r in rows:
            for rank, p in enumerate(r["predictions"], 1):
                w.writerow([r["image"], rank, p["class"], p["index"], f"{p['prob']:.6f}"])
    else:
        width = max(len(r["image"]) for r in rows)
        for r in rows:
            preds = "  ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in r["predictions"])
            print(f"{r['image']:<{width}}  {preds}")
