"""`resnetkit serve`: parse, build the ServeConfig, run the server."""

from __future__ import annotations

import argparse

from resnetkit.errors import DependencyError
from resnetkit.export import BACKENDS

TOKEN_ENV = "RESNETKIT_SERVE_TOKEN"  # resnetkit.serve.TOKEN_ENV, named here so `--help` needs no fastapi


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page over a weights file, with dynamic batching")
    p.add_argument("--weights", required=True, metavar="FILE|TAG", help="a model.safetensors or a pretrained tag")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference backend (default auto: the fastest that agrees with fp32, measured once per "
                        "model and machine, then cached)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU when there is one and the backend "
                                    "runs there)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                       "--token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help=f"require `Authorization: Bearer TOKEN` on every request (or ${TOKEN_ENV})")
    p.add_argument("--max-batch", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="images in flight before 503 (default 256)")
    p.add_argument("--max-images", type=int, default=64, help="images per request before 413 (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="request body before 413 (default 16)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="pixels per image before it is refused as a decompression bomb (default 40e6)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="504 for a request not answered by then "
                                                                 "(default 30)")
    p.add_argument("--workers", type=int, default=2, help="threads that decode and preprocess uploads (default 2)")
    p.add_argument("--threads", type=int, help="torch threads of the model (default: torch's own)")
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf values")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # the [serve] extra: imported here so that every other command runs without it
        from resnetkit.serve import ServeConfig, resolve_token, run
    except ImportError as e:
        raise DependencyError(f"resnetkit serve needs fastapi, uvicorn, python-multipart and prometheus-client "
                              f"({e.name} is missing): pip install 'resnetkit[serve]'") from None
    config = ServeConfig(args.weights, backend=args.backend, device=args.device, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_images=args.max_images,
                         max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, timeout_s=args.timeout_s,
                         workers=args.workers, threads=args.threads, token=resolve_token(args.token),
                         allow_nonfinite=args.allow_nonfinite)
    return run(config, host=args.host, port=args.port, on_start=lambda url: print(
        f"resnetkit serve: {args.weights} at {url} (API docs at {url}docs); Ctrl-C or SIGTERM drains and stops",
        flush=True))
