"""Load test of `resnetkit serve` on loopback: latency percentiles, throughput and errors at several
concurrencies, for a server with dynamic batching and one without (--max-batch 1 --max-wait-ms 0), side by
side with the same backend's offline batch throughput in this process.

    python benchmarks/serve_load.py                                  # resnet20 (the demo's) and resnet50
    python benchmarks/serve_load.py --models resnet20 --requests 10000 --concurrency 16

Bounded: at most --requests requests per (server, concurrency) and --budget-s seconds each; it talks to
127.0.0.1 only, to servers it starts itself. The models have random weights (the speed of a forward
pass does not depend on them); each request is one PNG of the model's input size, so decoding and
preprocessing are part of every request, as in use. The client threads share the machine with the
server: on a machine of few cores they take a share of its CPU, which the offline figure does not pay.
The batched and the unbatched server run side by side and take turns at each concurrency; the offline
figure is measured before and after the load and the mean used. Memory is each server's resident set,
read from /proc after its first request and after each row; the highest concurrency runs a second time
at the end ("again"), so that growth from first-time allocations (larger batches) is told apart from a
leak.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import resnetkit
from resnetkit.export import make_backend
from resnetkit.serve.client import Client, ServerProcess
from resnetkit.weights import Preprocessing, save_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# name -> (builder kwargs, preprocessing, class names): the demo's resnet20 on 28x28 grey Fashion-MNIST,
# and an ImageNet-sized resnet50
MODELS = {
    "resnet20": (dict(num_classes=10, in_chans=1), Preprocessing(size=(28, 28), mean=(0.286,), std=(0.353,),
                                                                 channel_order="L"), FASHION),
    "resnet50": (dict(num_classes=1000), Preprocessing(size=(224, 224), mean=(0.485, 0.456, 0.406),
                                                       std=(0.229, 0.224, 0.225)), [f"class{i}" for i in range(1000)]),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def offline_img_s(weights: Path, backend: str, batch: int, seconds: float) -> float:
    """The backend's own throughput on full batches of preprocessed images, in this process (median of
    the calls made in `seconds`, at least 3, after a warm-up call)."""
    model = resnetkit.load(weights)
    pre = model.card.preprocessing
    x = torch.randn(batch, pre.channels, *pre.size)
    run = make_backend(backend, model, example=x[:2], calib=x, batch_size=batch)
    with torch.no_grad():
        run(x)
        rates, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            t0 = time.perf_counter()
            run(x)
            rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def load(url: str, image: bytes, concurrency: int, requests: int, budget_s: float) -> dict:
    """`requests` POST /v1/predict from `concurrency` threads (one keep-alive connection each), stopping
    early at `budget_s`. Latency percentiles in ms, throughput in requests/s, errors counted."""
    lock, left = threading.Lock(), [requests]
    latencies, errors = [], [0]
    deadline = time.perf_counter() + budget_s

    def worker():
        c = Client(url, timeout_s=60)
        while True:
            with lock:
                if left[0] <= 0 or time.perf_counter() > deadline:
                    break
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                ok = c.post_files("/v1/predict?top_k=1", [("x.png", image)]).status == 200
            except OSError:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors[0] += 1
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(np.asarray(latencies) * 1000, [50, 90, 99]) if latencies else [float("nan")] * 3
    return {"n": len(latencies) + errors[0], "errors": errors[0], "p50": q[0], "p90": q[1], "p99": q[2],
            "req_s": len(latencies) / wall, "stopped_early": left[0] > 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,resnet50")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per server and concurrency (default: 2000 for resnet20, 96 for resnet50, sized "
                         "for a 2-core machine; the issue's aim is 10,000)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="time limit per server and concurrency")
    ap.add_argument("--backend", default="channels_last")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of the offline run (default 1: on a shared machine of few "
                         "cores, more threads than free cores makes every call slower)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    print(f"backend {args.backend}; batched server: --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}; "
          "unbatched: --max-batch 1 --max-wait-ms 0; loopback 127.0.0.1; client threads on the same machine")
    rows, offline_of = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            kw, pre, classes = MODELS[name]
            torch.manual_seed(0)
            weights = save_weights(resnetkit.create_model(name, **kw).eval(), Path(tmp) / f"{name}.safetensors",
                                   class_names=classes, preprocessing=pre)
            n = args.requests or (2000 if name == "resnet20" else 96)
            rng = np.random.default_rng(0)
            shape = pre.size if pre.channel_order == "L" else (*pre.size, 3)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
            image = buf.getvalue()
            servers = {"batched": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                       "unbatched": ["--max-batch", "1", "--max-wait-ms", "0"]}
            servers = {label: ServerProcess(["--weights", str(weights), "--backend", args.backend, "--device", "cpu",
                                             "--max-queue", "4096", "--threads", str(args.threads), *extra])
                       for label, extra in servers.items()}
            try:
                for server in servers.values():
                    server.start()
                    Client(server.url).post_files("/v1/predict", [("x.png", image)])  # first request, not timed
                rss0 = {label: rss_mb(server.pid()) for label, server in servers.items()}
                before = offline_img_s(weights, args.backend, args.max_batch, 5.0)
                print(f"\n{name}: offline {args.backend} batch {args.max_batch}: {before:.1f} img/s; {n} requests per "
                      f"row (bounded by {args.budget_s:g} s)", flush=True)
                # the two servers alternate at each concurrency, so that drift in the machine's load hits both;
                # the highest concurrency runs again at the end: the server's memory then shows its steady state
                for c, again in [*((c, "") for c in levels), (levels[-1], " (again)")]:
                    for label, server in servers.items():
                        r = load(server.url, image, c, n, args.budget_s)
                        rows.append([name, label + again, c, r, before, rss0[label], rss_mb(server.pid())])
                        print(_row(*rows[-1]), flush=True)
                after = offline_img_s(weights, args.backend, args.max_batch, 5.0)
            finally:
                for server in servers.values():
                    if server.proc is not None:
                        server.stop()
            offline = offline_of[name] = (before + after) / 2
            print(f"{name}: offline {before:.1f} img/s before the load, {after:.1f} after; the table's % uses the mean "
                  f"{offline:.1f}", flush=True)
            for row in rows:
                if row[0] == name:
                    row[4] = offline
    print("\n| model | server | concurrency | requests | errors | p50 ms | p90 ms | p99 ms | req/s | "
          "% of offline | server RSS MB (start -> end) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(_row(*row))
    print(f"offline img/s: {', '.join(f'{m} {o:.1f}' for m, o in offline_of.items())}")
    for name in args.models.split(","):
        for c in levels:
            b = next((r for m, s, cc, r, *_ in rows if (m, s, cc) == (name, "batched", c)), None)
            u = next((r for m, s, cc, r, *_ in rows if (m, s, cc) == (name, "unbatched", c)), None)
            if b and u and u["req_s"]:
                print(f"{name} concurrency {c}: batched / unbatched throughput {b['req_s'] / u['req_s']:.2f}x, "
                      f"p99 / p50 {b['p99'] / b['p50']:.2f}")


def _row(name, label, c, r, offline, rss0, rss1) -> str:
    early = " (time limit)" if r["stopped_early"] else ""
    return (f"| {name} | {label} | {c} | {r['n']}{early} | {r['errors']} | {r['p50']:.1f} | {r['p90']:.1f} | "
            f"{r['p99']:.1f} | {r['req_s']:.0f} | {100 * r['req_s'] / offline:.0f}% | {rss0:.0f} -> {rss1:.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
