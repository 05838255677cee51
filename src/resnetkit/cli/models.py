"""`resnetkit models` and `resnetkit summary`: the model library at a glance."""

from __future__ import annotations

import argparse

from resnetkit.errors import UserError
from resnetkit.models import TASKS, list_models, model_defaults
from resnetkit.models.profile import profile_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every model with parameters and MACs")
    p.add_argument("pattern", nargs="?", help="shell pattern to filter names, e.g. 'resnet_v2_*'")
    p.add_argument("--task", choices=TASKS, help="only classification or only segmentation models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="end points of a model with their shapes, plus totals")
    p.add_argument("name", help="a registered model name (see `resnetkit models`)")
    p.add_argument("--input", type=parse_size, default=None, metavar="H[xW]",
                   help="input size (default: the model's own, 224 or 32)")
    p.add_argument("--output-stride", type=int, default=None, metavar="N",
                   help="atrous output stride (fully convolutional use), e.g. 8 or 16")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="logits size; 0 for features only")
    p.add_argument("--in-chans", type=int, default=3, metavar="C", help="input channels (default 3)")
    p.add_argument("--no-global-pool", action="store_true", help="fully convolutional (dense logits)")
    p.set_defaults(func=cmd_summary)


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '321x513' -> (321, 513)."""
    try:
        parts = [int(t) for t in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use H or HxW, e.g. 224 or 321x513") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use H or HxW with positive integers")
    return (parts[0], parts[-1])


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def cmd_models(args) -> int:
    names = list_models(args.pattern, task=args.task)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; run `resnetkit models` for the list")
    width = max(len(n) for n in names)
    print(f"{'name':<{width}} {'task':<14} {'family':<12} {'input':>6} {'params':>12} {'MACs':>9}")
    for name in names:
        d = model_defaults(name)
        r = profile_model(name)
        print(f"{name:<{width}} {d['task']:<14} {d['family']:<12} {d['input_size']:>6} {r['params']:>12,} "
              f"{_human(r['macs']):>9}")
    return 0


def summary_text(name: str, input_size=None, output_stride=None, num_classes=None, in_chans=3,
                 global_pool=True) -> str:
    """The `summary` table as text (end point, shape), for the CLI and the demo."""
    kwargs = dict(in_chans=in_chans)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if num_classes is not None:
        kwargs["num_classes"] = num_classes or None
    if not global_pool:
        kwargs["global_pool"] = False
    if input_size is not None and min(input_size) < 8:
        raise UserError(f"input {input_size[0]}x{input_size[1]} is too small: use at least 8x8")
    try:
        r = profile_model(name, input_size, **kwargs)
    except RuntimeError as e:  # e.g. a kernel larger than the padded input
        raise UserError(f"{name} cannot run on input {input_size}: {str(e).splitlines()[0]}") from None
    h, w = r["input_size"]
    lines = [f"{name}  input {in_chans}x{h}x{w}" + (f"  output_stride {output_stride}" if output_stride else "")]
    width = max(len(k) for k in r["end_points"]) + 2
    for k, shape in r["end_points"].items():
        lines.append(f"  {k:<{width}} {'x'.join(map(str, shape))}")
    lines.append(f"  {'output':<{width}} {'x'.join(map(str, r['output']))}")
    lines.append(f"params {r['params']:,}   MACs {_human(r['macs'])} ({r['macs']:,})")
    return "\n".join(lines)


def cmd_summary(args) -> int:
    print(summary_text(args.name, args.input, args.output_stride, args.num_classes, args.in_chans,
                       not args.no_global_pool))
    return 0
