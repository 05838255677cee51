"""CPU inference of ResNet-50 (batch 16, 224x224, 2 threads): our backends, `auto` included, against ONNX
Runtime on torchvision's export, fp32 and int8, in one run; then batch-1 latency; then the top-1
agreement with fp32 of every reduced-precision path on real weights.

    python benchmarks/inference.py                  # the full table (about 6-8 minutes on 2 cores)
    python benchmarks/inference.py --quick          # resnet20 at 32x32: a smoke test of the script
    python benchmarks/inference.py --fm-weights runs/demo/model.safetensors   # agreement weights (default)
    python benchmarks/inference.py --bf16-study     # also bf16 by autocast (the backends cast the model)

Speed rows (random weights: speed does not depend on the values; all int8 rows share one calibration):
  onnxruntime fp32 / int8 (torchvision export)   the peer: torchvision's resnet50 through torch.onnx, ORT
                                                 level ALL; int8 = static QDQ per channel (ORT's quantiser)
  ours <backend>                                 resnetkit resnet50 under each named backend
  ours auto (<choice>)                           what `--backend auto` picks here, from the rows above
ONNX Runtime's intra-op threads do not spin ("session.intra_op.allow_spinning" = "0") in every session,
so that between its calls it does not take the cores of the backends timed after it. Rows are timed
round-robin (--rounds): a shared machine's drifting load hits them all alike; img/s is given as the mean
and spread over rounds. Setup (folding, export, quantisation) and the first call (compilation) are
reported apart.

Agreement rows: the share of images whose top-1 class equals fp32 eager's, on the Fashion-MNIST test set
(the demo weights, `make demo`) and on random images through the TF-slim v2 fixture network
(tests/fixtures/tf_slim/v2_cls_gp_even32, converted by resnetkit.convert.tf_slim).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from resnetkit.bench import format_table, machine_info, time_fn
from resnetkit.convert.tf_slim import load_slim_variables
from resnetkit.data import load_dataset, normalize
from resnetkit.export.auto import auto_backend, default_candidates
from resnetkit.export.backends import OrtBackend, TorchBackend, make_backend, unsupported
from resnetkit.export.fold import prepare_for_inference
from resnetkit.export.formats import export_model
from resnetkit.export.ort import ort_session
from resnetkit.export.quantize import calibration_images, quantize_onnx
from resnetkit.models import ResNet, create_model, resnet_v2_block
from resnetkit.weights import load

ROOT = Path(__file__).resolve().parents[1]
SLIM_V2 = ROOT / "tests" / "fixtures" / "tf_slim" / "v2_cls_gp_even32"
OURS = ("eager", "channels_last", "compile", "bf16", "compile-bf16", "onnxruntime", "onnxruntime-int8", "int8")
REDUCED = ("bf16", "compile-bf16", "int8", "onnxruntime-int8")
ORT_FP32, ORT_INT8 = "onnxruntime fp32 (torchvision export)", "onnxruntime int8 (torchvision export)"


def ort_row(model, size: int, threads: int, workdir: Path, name: str, calib: torch.Tensor | None = None,
            fold: bool = False) -> OrtBackend:
    """`model` exported to ONNX (folded first with `fold`), int8-quantised on `calib` if given, and run
    by ONNX Runtime without thread spinning."""
    t0 = time.perf_counter()
    path = workdir / f"{name}.onnx"
    net = prepare_for_inference(model, channels_last=False) if fold else model
    export_model(net, path, "onnx", input_size=(size, size), in_chans=calib.shape[1] if calib is not None else 3,
                 reference=model)
    if calib is not None:
        path = quantize_onnx(path, workdir / f"{name}.int8.onnx", calib)
    session = ort_session(path, threads=threads, spinning=False)
    return OrtBackend(name, session, time.perf_counter() - t0, path)


def autocast_row(name: str, model, x: torch.Tensor) -> TorchBackend:
    t0 = time.perf_counter()
    prepared = prepare_for_inference(model, example=x[:2], compile=name.startswith("compile"))
    return TorchBackend(name, prepared, True, time.perf_counter() - t0, bf16="autocast")


def build_rows(args, ours, tv, x, calib, work: Path) -> dict:
    builders = {ORT_FP32: lambda: ort_row(tv, args.input, args.threads, work, "tv"),
                ORT_INT8: lambda: ort_row(tv, args.input, args.threads, work, "tv_q", calib)}
    for name in OURS:
        if name == "onnxruntime":
            builders[f"ours {name}"] = lambda: ort_row(ours, args.input, args.threads, work, "ours", fold=True)
        elif name == "onnxruntime-int8":
            builders[f"ours {name}"] = lambda: ort_row(ours, args.input, args.threads, work, "ours_q", calib, True)
        else:
            builders[f"ours {name}"] = lambda name=name: make_backend(name, ours, example=x[:2], calib=calib)
    if args.bf16_study:  # bf16 by autocast (fp32 weights) instead of casting the model, as the backends do
        for name in ("bf16", "compile-bf16"):
            builders[f"ours {name} (autocast)"] = lambda name=name: autocast_row(name, ours, x)
    fns = {}
    for row, build in builders.items():
        why = unsupported(row.removeprefix("ours ").removesuffix(" (autocast)"))
        if row in args.skip or why:
            print(f"  skipped {row}" + (f": {why}" if why else ""), flush=True)
            continue
        t0 = time.perf_counter()
        fns[row] = build()
        r = time_fn(fns[row], x, iters=1, warmup=args.warmup)
        fns[row].first_s = r["first_s"]
        print(f"  built {row} ({getattr(fns[row], 'setup_s', time.perf_counter() - t0):.1f} s, first call "
              f"{r['first_s']:.1f} s)", flush=True)
    return fns


def add_auto(ours, fns: dict, x: torch.Tensor, cache: Path) -> str:
    """`auto` as the CLI runs it (measure, check agreement, choose), its candidates being the rows already
    built (so the run compiles each once); returns the new row's name."""
    cands = [(n, lambda n=n: fns[f"ours {n}"]) for n in default_candidates() if f"ours {n}" in fns]
    t0 = time.perf_counter()
    chosen = auto_backend(ours, calib=x, batch_size=len(x), candidates=cands, cache=cache)
    row = f"ours auto ({chosen.decision['backend']})"
    fns[row] = chosen
    print(f"  auto chose {chosen.decision['backend']} in {time.perf_counter() - t0:.1f} s (candidates built above)",
          flush=True)
    return row


def time_rounds(fns: dict, x: torch.Tensor, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Per row, the img/s of each round; the rows alternate within every round."""
    speeds: dict[str, list[float]] = {k: [] for k in fns}
    for k in range(rounds):
        for row, fn in fns.items():
            t = time_fn(fn, x, iters=per_round, warmup=0)["times"]
            speeds[row].append(len(x) * len(t) / sum(t))
        print(f"  round {k + 1}/{rounds} done", flush=True)
    return speeds


def speed_table(speeds: dict, fns: dict) -> list[dict]:
    base = statistics.fmean(speeds[ORT_FP32]) if ORT_FP32 in speeds else None
    rows = []
    for row, s in speeds.items():
        mean, sd = statistics.fmean(s), statistics.stdev(s) if len(s) > 1 else 0.0
        rows.append(dict(backend=row, img_s=mean, img_s_std=sd, setup_s=getattr(fns[row], "setup_s", 0.0),
                         first_s=getattr(fns[row], "first_s", 0.0), vs_ort=mean / base if base else None))
    width = max(len(r["backend"]) for r in rows)
    print(f"\n{'backend':<{width}}  {'img/s (mean ± std over rounds)':>30}  {'vs ORT fp32':>11}  {'setup s':>7}  "
          f"{'1st call s':>10}")
    for r in rows:
        vs = f"{r['vs_ort']:10.2f}x" if r["vs_ort"] else f"{'':>11}"
        print(f"{r['backend']:<{width}}  {r['img_s']:21.1f} ± {r['img_s_std']:6.1f}  {vs}  {r['setup_s']:7.1f}  "
              f"{r['first_s']:10.1f}")
    return rows


def latency(args, ours, fns: dict, auto_row: str | None, x1: torch.Tensor, cache: Path) -> list[dict]:
    """Batch 1: a fresh `auto` backend read from the cache (as a second CLI call would get it; a compiled
    one is specialised to its first batch size) against ONNX Runtime fp32 on torchvision's export."""
    runs = {}
    if auto_row is not None:
        runs[auto_row + ", batch 1"] = auto_backend(ours, calib=None, cache=cache)
    for row in (ORT_FP32, "ours onnxruntime", ORT_INT8):
        if row in fns:
            runs[row] = fns[row]
    out = []
    for row, fn in runs.items():
        r = time_fn(fn, x1, iters=args.latency_iters, warmup=args.warmup)
        out.append(dict(backend=row, setup_s=0.0, first_s=r["first_s"], img_s=1 / r["median_s"],
                        median_ms=1e3 * r["median_s"], p90_ms=1e3 * r["p90_s"], mean_ms=1e3 * r["mean_s"],
                        std_ms=1e3 * r["std_s"], n=r["n"]))
    print("\nbatch 1 latency (first call s = compilation for a compiled auto choice)")
    print(format_table(out, baseline=ORT_FP32))
    return out


@torch.no_grad()
def agreement(model, images: torch.Tensor, calib: torch.Tensor, cache: Path, batch: int = 256) -> dict:
    """Top-1 agreement with fp32 eager of each reduced-precision path (and auto's choice) on `images`."""
    def top1(run):
        return torch.cat([run(b).float().reshape(len(b), -1).argmax(1) for b in images.split(batch)])

    ref = top1(model)
    built, out = {}, {}
    for name in REDUCED:
        if unsupported(name) is None:
            built[name] = make_backend(name, model, example=images[:2], calib=calib)
            out[name] = float((top1(built[name]) == ref).float().mean())
    cands = [(n, lambda n=n: built.get(n) or make_backend(n, model, example=images[:2])) for n in default_candidates()]
    chosen = auto_backend(model, calib=images[:256], candidates=cands, cache=cache, batch_size=batch)
    out[f"auto ({chosen.decision['backend']})"] = float((top1(chosen) == ref).float().mean())
    return out


def slim_v2() -> torch.nn.Module:
    meta = json.loads(SLIM_V2.with_suffix(".json").read_text())
    data = np.load(SLIM_V2.with_suffix(".npz"))
    blocks = [resnet_v2_block(b["scope"], b["base_depth"], b["num_units"], b["stride"]) for b in meta["blocks"]]
    model = ResNet(blocks, num_classes=meta["num_classes"], global_pool=meta["global_pool"],
                   output_stride=meta["output_stride"], spatial_squeeze=meta["spatial_squeeze"], preact=True,
                   scope=meta["scope"], root_pool="same")
    return load_slim_variables(model, {k[4:]: data[k] for k in data.files if k.startswith("var/")}).eval()


def agreement_rows(args, cache_dir: Path) -> dict:
    table = {}
    if args.fm_weights and Path(args.fm_weights).exists():
        fm = load(args.fm_weights)
        pre = fm.card.preprocessing
        _, test = load_dataset("fashion_mnist", image_size=pre.size[0], channels=pre.channels)
        images = normalize(test.images[:args.fm_n], torch.tensor(pre.mean), torch.tensor(pre.std))
        calib = calibration_images("fashion_mnist", pre, n=256)
        table[f"Fashion-MNIST demo weights ({len(images)} test images)"] = agreement(
            fm, images, calib, cache_dir / "fm.json")
    else:
        print(f"\n(no Fashion-MNIST weights at {args.fm_weights}: `make demo` writes them; agreement rows skipped)")
    g = torch.Generator().manual_seed(2)
    slim = slim_v2()
    images, calib = torch.randn(args.slim_n, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)
    table[f"TF-slim v2 fixture ({args.slim_n} random 32x32 images)"] = agreement(
        slim, images, calib, cache_dir / "slim.json")
    print("\ntop-1 agreement with fp32 eager")
    for what, res in table.items():
        print(f"  {what}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in res.items()))
    return table


def verdict(rows: list[dict], lat: list[dict]) -> None:
    speed = {r["backend"]: r["img_s"] for r in rows}
    if ORT_FP32 not in speed:
        return
    ort = speed[ORT_FP32]
    auto = next((v for k, v in speed.items() if k.startswith("ours auto")), None)
    strict = max((v for k, v in speed.items() if k.startswith("ours") and "bf16" not in k and "int8" not in k
                  and "auto" not in k), default=None)
    int8 = max((v for k, v in speed.items() if k in ("ours int8", "ours onnxruntime-int8")), default=None)
    print("\ntargets (issue 14)")
    if auto:
        print(f"  auto vs ONNX Runtime fp32: {auto / ort:.2f}x (target >= 1.8x)")
    if strict:
        print(f"  best strict-fp32 path vs ONNX Runtime fp32: {strict / ort:.2f}x (target >= 1.0x)")
    if int8 and ORT_INT8 in speed:
        print(f"  best int8 vs ONNX Runtime int8: {int8 / speed[ORT_INT8]:.2f}x (target >= 1.0x)")
    ms = {r["backend"]: r["median_ms"] for r in lat}
    auto_ms = next((v for k, v in ms.items() if k.startswith("ours auto")), None)
    if auto_ms and ORT_FP32 in ms:
        print(f"  batch-1 latency auto / ONNX Runtime: {auto_ms / ms[ORT_FP32]:.2f} (target <= 0.8)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over the rows (default 5)")
    p.add_argument("--per-round", type=int, default=3, help="timed calls per row per round (default 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--latency-iters", type=int, default=20, help="timed calls per batch-1 row")
    p.add_argument("--skip", default="", help="comma-separated row names to leave out (e.g. 'ours eager')")
    p.add_argument("--fm-weights", default=str(ROOT / "runs" / "demo" / "model.safetensors"),
                   help="Fashion-MNIST weights for the agreement rows (default: make demo's)")
    p.add_argument("--fm-n", type=int, default=2000, help="Fashion-MNIST test images for agreement")
    p.add_argument("--slim-n", type=int, default=512, help="random images through the TF-slim v2 fixture")
    p.add_argument("--no-agreement", action="store_true", help="speed rows only")
    p.add_argument("--bf16-study", action="store_true", help="add bf16 rows by autocast instead of casting the model")
    p.add_argument("--quick", action="store_true", help="resnet20 at 32x32, few calls: a smoke test")
    p.add_argument("--json", help="write the rows and the machine description here")
    args = p.parse_args(argv)
    if args.quick:
        args.input, args.rounds, args.per_round, args.warmup, args.latency_iters = 32, 2, 2, 1, 3
        args.fm_n, args.slim_n = 256, 64
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    name = "resnet20" if args.quick else "resnet50"
    ours = create_model(name).eval()
    tv = (torchvision.models.resnet50() if not args.quick else copy.deepcopy(ours)).eval()
    x = torch.randn(args.batch, 3, args.input, args.input, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(32, 3, args.input, args.input, generator=torch.Generator().manual_seed(1))
    work = Path(tempfile.mkdtemp(prefix="resnetkit-bench-"))
    info = machine_info(args.threads)
    print(f"{name}  batch {args.batch}  {args.input}x{args.input}  threads {args.threads}")
    print(f"cpu: {info['cpu']} ({info['cores']} cores)  torch {info['torch']}  onnxruntime {info['onnxruntime']}  "
          f"load average {info.get('load_avg_1_5_15')}")
    print(f"command: python {' '.join(sys.argv)}", flush=True)
    t_start = time.perf_counter()

    fns = build_rows(args, ours, tv, x, calib, work)
    auto_row = add_auto(ours, fns, x, work / "cache.json") if "ours auto" not in args.skip else None
    rows = speed_table(time_rounds(fns, x, args.rounds, args.per_round), fns)
    lat = latency(args, ours, fns, auto_row, x[:1], work / "cache.json")
    agree = {} if args.no_agreement else agreement_rows(args, work)
    verdict(rows, lat)
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(model=name, batch=args.batch, input=args.input, machine=info,
                                                   rows=rows, latency_rows=lat, agreement=agree), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
