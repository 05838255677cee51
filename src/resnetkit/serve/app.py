"""`create_app(config)`: the FastAPI application behind `resnetkit serve`.

The event loop only parses requests and awaits: decoding and preprocessing run in a thread pool
(`workers` threads), the model runs on one thread of its own fed by the dynamic batcher
(resnetkit.serve.batcher). The weights are loaded when the app is created (a bad file fails at once, in
one line); the backend is built and warmed in the background after start-up, and /readyz says ready
only then. No request writes a file: bodies are parsed in memory and PNGs encoded to bytes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from resnetkit.data.segmentation import normalize_one, palette_png, voc_palette
from resnetkit.errors import ConfigError, UserError
from resnetkit.export import make_backend
from resnetkit.export.explain import cam_image
from resnetkit.export.predict import top_k_rows
from resnetkit.export.segment import class_shares, overlay, predict_logits
from resnetkit.serve.batcher import Batcher
from resnetkit.serve.inputs import RequestError, decode_image, parse_body
from resnetkit.serve.model import load_served

log = logging.getLogger(__name__)

STATIC = resources.files("resnetkit.serve") / "static"
MAX_TOP_K = 1000
TOKEN_ENV = "RESNETKIT_SERVE_TOKEN"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What `resnetkit serve` runs; every limit is per server process."""

    weights: str  # a weights file or a catalogue tag
    backend: str = "auto"
    device: str | None = None  # None: the first GPU when there is one, else the CPU
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_queue: int = 256  # images accepted and not yet answered; more get 503
    max_images: int = 64  # images in one request; more get 413
    max_upload_mb: float = 16.0  # request body; more gets 413
    max_pixels: int = 40_000_000  # per decoded image; more is refused as a decompression bomb
    timeout_s: float = 30.0  # a request not answered by then gets 504
    workers: int = 2  # decoding / preprocessing threads
    threads: int | None = None  # torch intra-op threads of the model (None: torch's default)
    token: str | None = None  # when set, every request needs `Authorization: Bearer TOKEN`
    allow_nonfinite: bool = False

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_images", "max_pixels", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_upload_mb", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token is empty; give a secret string or leave it unset")


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process do not clash)."""

    def __init__(self, config: ServeConfig):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("resnetkit_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=r)
        self.errors = Counter("resnetkit_errors", "requests answered with a 4xx/5xx status", ["path", "status"],
                              registry=r)
        self.latency = Histogram("resnetkit_request_latency_seconds", "request latency, body read to reply",
                                 ["path"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.queue = Gauge("resnetkit_queue_depth", "images waiting for the model", registry=r)
        self.in_flight = Gauge("resnetkit_images_in_flight", "images accepted and not yet answered", registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, config.max_batch})
        self.batch = Histogram("resnetkit_batch_size", "images per model call", ["op"], registry=r,
                               buckets=[b for b in buckets if b <= config.max_batch])
        Gauge("resnetkit_max_batch", "the batcher's maximum batch (--max-batch)", registry=r).set(config.max_batch)
        Gauge("resnetkit_max_wait_seconds", "the batcher's maximum queue delay (--max-wait-ms)",
              registry=r).set(config.max_wait_ms / 1000)
        self.ready = Gauge("resnetkit_ready", "1 once the backend is built and warmed", registry=r)


class _Engine:
    """The model, its backend and the two pools: decoding threads and the model's own thread."""

    def __init__(self, config: ServeConfig, metrics: _Metrics):
        self.config, self.metrics = config, metrics
        self.model, self.device, self.weights_source = load_served(
            config.weights, backend=config.backend, device=config.device, allow_nonfinite=config.allow_nonfinite)
        self.card = self.model.card
        self.task = self.card.task
        if self.card.preprocessing is None or (self.task == "classification" and self.card.preprocessing.size is None):
            raise ConfigError(f"{config.weights}: its card has no preprocessing (size, mean, std); save it with "
                              "save_weights(preprocessing=...)")
        self.pre = self.card.preprocessing
        self.transform = self.pre.transform() if self.task == "classification" else None
        self.names = list(self.card.class_names or [str(i) for i in range(self.model.num_classes)])
        self.decoders = ThreadPoolExecutor(config.workers, thread_name_prefix="decode")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.backend = None
        self.decision: dict = {}
        self.ready = threading.Event()
        self.build_error: str | None = None
        self.in_flight = 0
        self.decoding = 0  # images accepted whose decoding has not finished: the batcher may wait for them

    # -- start-up ------------------------------------------------------------------------------------
    def build(self) -> None:
        """Build the backend and warm it with a full batch (a compiled backend specialises to its first
        batch size and pads smaller ones), then a single image; runs on the model thread."""
        try:
            t0 = time.perf_counter()
            if self.config.threads is not None:
                torch.set_num_threads(self.config.threads)
            example = self._example(self.config.max_batch)
            calib = example if self.task == "classification" else [example[:1]]
            self.backend = make_backend(self.config.backend, self.model, example=example[:2], calib=calib,
                                        batch_size=self.config.max_batch, threads=self.config.threads)
            for n in (self.config.max_batch, 1):
                self._run("classify" if self.task == "classification" else "segment", self._example(n))
            self.decision = dict(getattr(self.backend, "decision", None) or
                                 {"backend": self.config.backend, "source": "requested (--backend)"})
            if self.decision.get("source") == "measured" and not ((self.card.extra or {}).get("train_config") or
                                                                   {}).get("data"):
                # auto's log says "the job's images": a server has none yet, so it measured on these
                self.decision["calibration"] = f"{len(example)} random inputs (the card names no training data)"
            self.decision["warm_s"] = round(time.perf_counter() - t0, 3)
            self.ready.set()
            self.metrics.ready.set(1)
            log.info("serve: %s on %s, backend %s, ready in %.1f s", self.card.arch, self.device,
                     self.decision["backend"], self.decision["warm_s"])
        except Exception as e:  # noqa: BLE001  (reported by /readyz and the log, not a crash)
            self.build_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.exception("serve: building the backend failed")

    def _example(self, n: int) -> torch.Tensor:
        size = self.pre.size or (65, 65)  # fully convolutional: an aligned size (stride * k + 1) warms it
        return torch.randn(n, self.pre.channels, *size, generator=torch.Generator().manual_seed(0))

    # -- the model thread ----------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, op: str, x: torch.Tensor) -> list:
        x = x.to(self.device)
        if op == "classify":
            return list(self.backend(x).float().softmax(dim=1).cpu())  # (K,) per image
        masks = predict_logits(self.backend, x).argmax(1).to(torch.uint8).cpu().numpy()
        return list(masks)  # (H, W) uint8 per image

    # -- per request ---------------------------------------------------------------------------------
    def admit(self, n: int) -> None:
        if not self.ready.is_set():
            why = f"the backend failed to build: {self.build_error}" if self.build_error else \
                "the model is still loading and warming up"
            raise RequestError(503, f"not ready: {why}; see /readyz", {"Retry-After": "2"})
        if self.in_flight + n > self.config.max_queue:
            raise RequestError(503, f"queue full ({self.in_flight} images in flight, max_queue="
                                    f"{self.config.max_queue}); retry shortly", {"Retry-After": "1"})
        self.in_flight += n
        self.metrics.in_flight.set(self.in_flight)

    def release(self, n: int) -> None:
        self.in_flight -= n
        self.metrics.in_flight.set(self.in_flight)

    def require(self, task: str, endpoint: str, instead: str) -> None:
        if self.task != task:
            raise RequestError(400, f"{endpoint} needs {task} weights; this server holds {self.card.arch}, a "
                                    f"{self.task} model: use {instead}")

    def decode(self, name: str, data: bytes) -> Image.Image:
        return decode_image(name, data, "L" if self.pre.channel_order == "L" and self.task == "classification"
                            else "RGB", self.config.max_pixels)

    def classify_input(self, name: str, data: bytes) -> torch.Tensor:
        return self.transform(self.decode(name, data))  # (C, H, W), exactly what `resnetkit predict` feeds

    def segment_input(self, name: str, data: bytes) -> tuple[np.ndarray, torch.Tensor]:
        a = np.asarray(self.decode(name, data), dtype=np.uint8)  # (H, W, 3)
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in (self.pre.mean, self.pre.std))
        return a, normalize_one(torch.from_numpy(a.transpose(2, 0, 1).copy()), mean, std)

    def card_summary(self) -> dict:
        c = self.card
        out = {"arch": c.arch, "task": self.task, "num_classes": len(self.names), "class_names": self.names,
               "preprocessing": c.preprocessing.to_dict(), "metrics": dict(c.metrics), "source": c.source,
               "weights": self.weights_source, "device": str(self.device), "threads": torch.get_num_threads(),
               "ready": self.ready.is_set(),
               "backend": self.decision or None,
               "batching": {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms,
                            "max_queue": self.config.max_queue},
               "limits": {"max_upload_mb": self.config.max_upload_mb, "max_images": self.config.max_images,
                          "max_pixels": self.config.max_pixels, "timeout_s": self.config.timeout_s}}
        if self.task == "segmentation":
            pal = voc_palette()
            out["palette"] = {n: "#{:02x}{:02x}{:02x}".format(*pal[i]) for i, n in enumerate(self.names)}
        return out


def _png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _param(name: str, given, fields: dict, default, kind, low=None, high=None):
    """A parameter from the query string (`given`, None when absent), else the body's fields, else
    `default`; checked, with a 400 naming it."""
    raw = given if given is not None else fields.get(name, default)
    try:
        value = raw.lower() in ("1", "true", "yes", "on") if kind is bool and isinstance(raw, str) else kind(raw)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(400, f"{name}={value!r} is out of range [{low}, {high}]")
    return value


def create_app(config: ServeConfig) -> FastAPI:
    """The application for `config`; loads the weights now (UserError when they are unusable) and builds
    the backend in the background once it starts (see /readyz)."""
    metrics = _Metrics(config)
    engine = _Engine(config, metrics)
    batcher = Batcher(engine._run, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                      executor=engine.model_thread, on_batch=lambda op, n: metrics.batch.labels(op).observe(n),
                      expecting=lambda: engine.decoding)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        loop = asyncio.get_running_loop()
        building = loop.run_in_executor(engine.model_thread, engine.build)
        try:
            yield
        finally:
            await asyncio.gather(building, return_exceptions=True)
            await batcher.stop()
            engine.decoders.shutdown(wait=True)
            engine.model_thread.shutdown(wait=True)

    app = FastAPI(title="resnetkit serve", version="1", lifespan=lifespan,
                  description=f"{engine.card.arch} ({engine.task}) from {engine.weights_source}")
    app.state.engine, app.state.metrics = engine, metrics
    app.add_middleware(_Guard, config=config, metrics=metrics)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError):
        return JSONResponse({"error": e.message, "status": e.status}, e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):  # 404, 405: the same one-line shape
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}", "status": e.status_code},
                            e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # a bug: logged with its traceback, one line to the client
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server's log", "status": 500},
                            500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}", "status": 400}, 400)

    async def images_of(request: Request) -> tuple[list[tuple[str, bytes]], dict]:
        body = await request.body()
        return parse_body(body, request.headers.get("content-type", ""), max_images=config.max_images)

    async def decoded(fn, images):
        loop = asyncio.get_running_loop()
        engine.decoding += len(images)
        try:
            return await asyncio.gather(*(loop.run_in_executor(engine.decoders, fn, name, data)
                                          for name, data in images))
        finally:
            engine.decoding -= len(images)

    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/v1/predict", openapi_extra=body_doc, summary="classify images: top-k classes and probabilities")
    async def v1_predict(request: Request, top_k: int | None = Query(None, description="classes per image (5)")):
        engine.require("classification", "/v1/predict", "/v1/segment")
        images, fields = await images_of(request)
        k = _param("top_k", top_k, fields, 5, int, 1, MAX_TOP_K)
        engine.admit(len(images))
        try:
            xs = await decoded(engine.classify_input, images)
            probs = await batcher.submit("classify", xs)
        finally:
            engine.release(len(images))
        rows = top_k_rows(torch.stack(probs), engine.names, k)
        return {"results": [{"image": name, "predictions": r} for (name, _), r in zip(images, rows)]}

    @app.post("/v1/segment", openapi_extra=body_doc, summary="segment images: palette mask PNG, class pixel shares")
    async def v1_segment(request: Request,
                         want_overlay: bool | None = Query(None, alias="overlay", description="add overlay_png"),
                         alpha: float | None = Query(None, description="overlay opacity (0.5)")):
        engine.require("segmentation", "/v1/segment", "/v1/predict")
        images, fields = await images_of(request)
        want = _param("overlay", want_overlay, fields, False, bool)
        a = _param("alpha", alpha, fields, 0.5, float, 0.0, 1.0)
        engine.admit(len(images))
        try:
            inputs = await decoded(engine.segment_input, images)
            masks = await batcher.submit("segment", [x for _, x in inputs])
            loop = asyncio.get_running_loop()

            def encode(pixels: np.ndarray, mask: np.ndarray) -> dict:
                out = {"mask_png": _png(palette_png(mask)), "shares": class_shares(mask, engine.names),
                       "size": list(mask.shape)}
                if want:
                    out["overlay_png"] = _png(Image.fromarray(overlay(pixels, mask, a)))
                return out

            encoded = await asyncio.gather(*(loop.run_in_executor(engine.decoders, encode, px, m)
                                             for (px, _), m in zip(inputs, masks)))
        finally:
            engine.release(len(images))
        return {"results": [{"image": name, **e} for (name, _), e in zip(images, encoded)]}

    @app.post("/v1/explain", openapi_extra=body_doc, summary="Grad-CAM heat map PNG of a classifier")
    async def v1_explain(request: Request,
                         class_name: str | None = Query(None, description="class to explain (the top one)"),
                         layer: str | None = Query(None, description="end point (the last block)"),
                         alpha: float | None = Query(None, description="heat map opacity (0.5)")):
        engine.require("classification", "/v1/explain", "/v1/segment")
        images, fields = await images_of(request)
        a = _param("alpha", alpha, fields, 0.5, float, 0.0, 1.0)
        class_name = class_name if class_name is not None else fields.get("class_name")
        layer = layer if layer is not None else fields.get("layer")
        target = None
        if class_name is not None:
            if class_name not in engine.names:
                raise RequestError(400, f"class_name {class_name!r} is not one of the model's classes (GET /v1/model "
                                        "lists them)")
            target = engine.names.index(class_name)
        engine.admit(len(images))
        try:
            ims = await decoded(engine.decode, images)
            loop = asyncio.get_running_loop()
            rows = []
            for im in ims:  # Grad-CAM needs autograd through the eager model: on the model's thread, one by one
                try:
                    r = await loop.run_in_executor(engine.model_thread, lambda im=im: cam_image(
                        engine.model, im, layer=layer, target=target, alpha=a))
                except UserError as e:
                    raise RequestError(400, str(e)) from None
                r["cam_png"] = await loop.run_in_executor(engine.decoders, _png, r.pop("overlay"))
                rows.append(r)
        finally:
            engine.release(len(images))
        return {"results": [{"image": name, **r} for (name, _), r in zip(images, rows)]}

    @app.get("/v1/model", summary="the model card, the backend chosen and why, the limits")
    async def v1_model():
        return engine.card_summary()

    @app.get("/healthz", summary="the process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="ready once the backend is built and warmed")
    async def readyz():
        if engine.ready.is_set():
            return {"ready": True, "backend": engine.decision.get("backend")}
        body = {"ready": False, "error": engine.build_error} if engine.build_error else {"ready": False}
        return JSONResponse(body, 503, headers={"Retry-After": "2"})

    @app.get("/metrics", summary="Prometheus text format")
    async def prometheus():
        metrics.queue.set(batcher.depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    return app


class _Guard:
    """Pure ASGI middleware, outermost: the bearer token, the upload limit (Content-Length, then counted
    while the body streams in, so a chunked upload cannot slip past), the request timeout (a slow client
    gets 504 and never held the model: its images are queued only once its body is complete), and the
    request metrics."""

    def __init__(self, app, config: ServeConfig, metrics: _Metrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.limit = int(config.max_upload_mb * 2**20)
        self.routes = {"/", "/v1/predict", "/v1/segment", "/v1/explain", "/v1/model", "/healthz", "/readyz",
                       "/metrics", "/docs", "/openapi.json"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, path = time.perf_counter(), scope["path"]
        label = path if path in self.routes else ("/static" if path.startswith("/static/") else "other")
        started, status = False, 500

        async def send_(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        async def reply(code: int, message: str, headers: dict | None = None):
            body = JSONResponse({"error": message, "status": code}, code, headers=headers)
            await body(scope, receive, send_)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if self.config.token is not None and not hmac.compare_digest(
                    headers.get("authorization", "").encode(), f"Bearer {self.config.token}".encode()):
                return await reply(401, "missing or wrong token: send `Authorization: Bearer TOKEN`",
                                   {"WWW-Authenticate": "Bearer"})
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return await reply(400, "Content-Length is not a number")
            if length > self.limit:
                return await reply(413, f"upload of {length:,} bytes is over the limit of {self.limit:,} "
                                        f"(--max-upload-mb {self.config.max_upload_mb:g})")
            seen = 0

            async def receive_():
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
                return message

            try:
                async with asyncio.timeout(self.config.timeout_s):
                    await self.app(scope, receive_, send_)
            except _TooLarge:
                if not started:
                    await reply(413, f"upload over the limit of {self.limit:,} bytes "
                                     f"(--max-upload-mb {self.config.max_upload_mb:g})")
            except TimeoutError:
                if not started:
                    await reply(504, f"not answered within {self.config.timeout_s:g} s (--timeout-s); the server "
                                     "is overloaded or the upload too slow")
        finally:
            self.metrics.requests.labels(label, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t0)


class _TooLarge(Exception):
    pass


def resolve_token(token: str | None) -> str | None:
    """--token, else $RESNETKIT_SERVE_TOKEN, else None."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, token: str | None) -> None:
    """The binding rule: 127.0.0.1 (or ::1, localhost) needs nothing; any other address needs a token."""
    if host not in LOOPBACK and token is None:
        raise ConfigError(f"host {host!r} is reachable from other machines; give a token (--token TOKEN or "
                          f"${TOKEN_ENV}) so that every request must send `Authorization: Bearer TOKEN`, or bind "
                          "127.0.0.1")


def run(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        on_start: Callable[[str], None] | None = None) -> int:
    """Serve `config` with uvicorn until SIGINT/SIGTERM; then stop accepting, finish every request already
    accepted, and return 0. `on_start(url)` is called once the weights are loaded, before binding."""
    import uvicorn

    check_bind(host, config.token)
    app = create_app(config)
    sock = _listen(host, port)
    if on_start is not None:
        on_start(f"http://{host}:{port}/")
    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises the signal once drained (so the process would die of SIGTERM, status -15); a
            # drained stop is a normal end here: exit 0.
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=None, lifespan="on"))
    server.run(sockets=[sock])
    return 0 if server.started else 1


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a port in use is one line (ConfigError), not a log record."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another port or host") from None
    return sock


__all__ = ["LOOPBACK", "TOKEN_ENV", "ServeConfig", "check_bind", "create_app", "resolve_token", "run"]
