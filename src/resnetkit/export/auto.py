"""`--backend auto`: the fastest backend that agrees with fp32, measured once per model and machine.

What it does for a job of `n_images` images:
1. Look up the decision for (model weights sha256, machine, torch version) in the cache file
   ($RESNETKIT_CACHE/backends.json, default ~/.cache/resnetkit/backends.json). An entry made on another
   machine or by another torch version does not match, so it is never trusted; an unreadable file is
   ignored with a warning and rewritten.
2. Without one, and for a job of fewer than `min_images` images (AUTO_MIN_IMAGES), measure nothing and
   run channels_last (exact fp32): measuring compiles every candidate, tens of seconds for a ResNet-50,
   which a one-image job should not pay. A larger job measures each candidate on a calibration set (the
   model's own training data when its card names it, else the job's images): its speed, its setup
   cost (folding, exporting, compiling, quantising) and its top-1 agreement with fp32 eager (per-pixel
   agreement for segmentation). The int8 candidates are calibrated on the first QUANT_CALIB_N of those
   images, and every candidate is judged on the others only, so a quantised model is never judged on the
   images it was calibrated on. Candidates below AGREEMENT are rejected; the rest are cached with their
   figures.
3. Pick, among the accepted candidates, the one with the least expected job time, setup + n / speed:
   so a cached compile-bf16 still loses to channels_last on a job too small to repay its compilation.
One log line says what was chosen and why. `auto-fp32` does the same among the fp32 candidates only
(no bf16, no int8): for a user who wants fp32's numbers, fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from resnetkit._helpers import atomic_write_json, cpu_model
from resnetkit.errors import UserError
from resnetkit.export.quantize import calibration_images
from resnetkit.export.runtimes import NAMED, Backend, TorchBackend, build_named, input_device, unsupported

log = logging.getLogger(__name__)

AGREEMENT = 0.995  # top-1 (or pixel) agreement with fp32 eager a candidate needs
AUTO_MIN_IMAGES = 1000  # an uncached job smaller than this runs channels_last instead of measuring
CALIB_N = 256  # classification calibration images
QUANT_CALIB_N = 64  # ... of which the int8 candidates calibrate on these; agreement is judged on the other 192
# (one disagreement costs 0.52%)
SEG_CALIB_N = 4  # segmentation: a few whole images already hold ~10^5 pixels
MIN_TIMED = 5  # calls timed per candidate, at the least
CACHE_VERSION = 1
FALLBACK = "channels_last"  # exact fp32, no compilation: what small jobs run


def cache_path() -> Path:
    """Where decisions are kept: $RESNETKIT_CACHE/backends.json, else ~/.cache/resnetkit/backends.json."""
    root = os.environ.get("RESNETKIT_CACHE")
    return Path(root) / "backends.json" if root else Path.home() / ".cache" / "resnetkit" / "backends.json"


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's architecture and weights (names, dtypes, shapes, bytes): the same weights
    give the same digest whichever file they were loaded from."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(repr(config.to_dict() if hasattr(config, "to_dict") else type(model).__name__).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def machine_key(threads: int | None = None) -> str:
    """The hardware a decision holds for: CPU model, cores, threads in force and GPU."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()} | {os.cpu_count()} cores | {threads or torch.get_num_threads()} threads | {gpu}"


FP32 = ("channels_last", "compile", "onnxruntime")  # exact-precision candidates (auto-fp32 picks among these)


def default_candidates(fp32: bool = False) -> list[str]:
    """compile-bf16 where bf16 runs natively, compile (fp32) elsewhere; onnxruntime and onnxruntime-int8
    when ONNX Runtime is installed; int8 (PT2E) where the CPU has VNNI or AMX; and channels_last, the
    uncompiled baseline every job can fall back on. `fp32`: the fp32 ones only."""
    bf16 = unsupported("compile-bf16") is None and not fp32
    names = [FALLBACK, "compile-bf16" if bf16 else "compile"]
    try:
        import onnxruntime  # noqa: F401  (optional: only a candidate where it is installed)

        names += ["onnxruntime"] if fp32 else ["onnxruntime", "onnxruntime-int8"]
    except ImportError:
        log.debug("auto: onnxruntime not installed; not a candidate")
    if not fp32 and unsupported("int8") is None:
        names.append("int8")
    return names


# -- the cache ---------------------------------------------------------------------------------------


def read_cache(path: Path) -> list[dict]:
    """The cached decisions; an unreadable or malformed file gives none (with a warning)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if data.get("version") == CACHE_VERSION else []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("'entries' is not a list of objects")
        return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("auto: ignoring the unreadable backend cache %s (%s); it will be rewritten", path, e)
        return []


def _key(digest: str, threads: int | None) -> dict:
    return {"model_sha256": digest, "machine": machine_key(threads), "torch": str(torch.__version__)}


def _lookup(entries: list[dict], key: dict) -> dict | None:
    return next((e for e in entries if all(e.get(k) == v for k, v in key.items())), None)


def _store(path: Path, entries: list[dict], entry: dict, key: dict) -> None:
    kept = [e for e in entries if not all(e.get(k) == v for k, v in key.items())]
    atomic_write_json(path, {"version": CACHE_VERSION, "entries": kept + [entry]})


# -- measuring ---------------------------------------------------------------------------------------


def _batches(calib: torch.Tensor | list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Equal batches (a compiled backend would recompile for a smaller last one); a list is used as is."""
    if isinstance(calib, list):
        return calib
    b = max(1, min(batch_size, len(calib)))
    return list(calib[: len(calib) // b * b].split(b))


@torch.no_grad()
def _predictions(run: Callable, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """Argmax over classes (dim 1) per batch, and each call's time."""
    preds, times = [], []
    for x in batches:
        x = x.to(input_device(run)) if isinstance(run, nn.Module) else x  # a model on a GPU: its inputs there
        t0 = time.perf_counter()
        out = run(x)
        times.append(time.perf_counter() - t0)
        preds.append(out.float().argmax(1))
    return preds, times


def measure(name: str, build: Callable[[], Callable], batches: list[torch.Tensor], reference: list[torch.Tensor],
            judged_from: int = 0) -> tuple[dict, Callable | None]:
    """Build one candidate, run it on the calibration batches twice (the first pass pays compilation),
    and return its figures {"img_s", "setup_s", "agreement", "ok"} and the built backend (None when it
    disagrees with fp32 or fails: a candidate that cannot run here is skipped, not fatal). The agreement
    counts batches `judged_from` on (the ones before calibrated the int8 candidates)."""
    t0 = time.perf_counter()
    try:
        run = build()
        _predictions(run, batches[:1])  # the first call compiles / allocates
        setup_s = time.perf_counter() - t0
        preds, times = _predictions(run, batches)
        # Speed from at least MIN_TIMED calls (one call is noise on a busy machine), the median batch.
        sizes = [len(x) for x in batches]
        while len(times) < MIN_TIMED:
            more = batches[: MIN_TIMED - len(times)]
            times += _predictions(run, more)[1]
            sizes += [len(x) for x in more]
    except Exception as e:  # noqa: BLE001  (an inductor or ONNX Runtime failure is one candidate less)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.info("auto: skipping %s: %s", name, why)
        return {"ok": False, "error": why}, None
    held = slice(judged_from if judged_from < len(reference) else 0, None)
    same = sum(int((p == r).sum()) for p, r in zip(preds[held], reference[held]))
    agreement = same / sum(r.numel() for r in reference[held])
    img_s = statistics.median(n / t for n, t in zip(sizes, times))
    ok = agreement >= AGREEMENT
    return {"img_s": img_s, "setup_s": setup_s, "agreement": agreement, "ok": ok}, (run if ok else None)


def _own_data(model: nn.Module, n: int) -> tuple[torch.Tensor, str] | None:
    """`n` training images of the dataset the model's card says it was trained on, if that loads."""
    card = getattr(model, "card", None)
    data = (((card.extra or {}).get("train_config") or {}).get("data") or {}) if card is not None else {}
    spec = data.get("name") if isinstance(data, dict) else None
    if not isinstance(spec, str) or card.task != "classification":
        return None
    try:
        return calibration_images(spec, card.preprocessing, n=n, data_dir=data.get("data_dir")), f"{spec} (training)"
    except (UserError, OSError) as e:
        log.debug("auto: cannot load %s for calibration (%s); using the job's images", spec, e)
        return None


class _Wrapped(Backend):
    """An injected candidate (a plain callable) as a Backend."""

    def __init__(self, name: str, fn: Callable):
        super().__init__(name)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x).float()


# -- choosing ----------------------------------------------------------------------------------------


def _expected_s(figures: dict, n_images: int | None) -> float:
    """Expected job time: setup (export, compilation) + the images at the measured speed. Without a
    job size, speed alone decides (a long-running job)."""
    if n_images is None:
        return 1.0 / figures["img_s"]
    return figures["setup_s"] + n_images / figures["img_s"]


def _pick(results: dict[str, dict], n_images: int | None) -> str:
    ok = {k: v for k, v in results.items() if v.get("ok")}
    return min(ok, key=lambda k: _expected_s(ok[k], n_images)) if ok else FALLBACK


def _summary(results: dict[str, dict]) -> str:
    parts = []
    for k, v in results.items():
        if "img_s" in v:
            verdict = "" if v["ok"] else f" REJECTED (< {100 * AGREEMENT:.1f}%)"
            parts.append(f"{k} {v['img_s']:.0f} img/s, setup {v['setup_s']:.0f} s, "
                         f"agreement {100 * v['agreement']:.2f}%{verdict}")
        else:
            parts.append(f"{k} skipped ({v.get('error', 'unavailable')})")
    return "; ".join(parts)


def auto_backend(model: nn.Module, *, calib: torch.Tensor | list[torch.Tensor] | Callable | None = None,
                 n_images: int | None = None, batch_size: int | None = None, threads: int | None = None,
                 candidates: Iterable[str | tuple[str, Callable[[], Callable]]] | None = None,
                 min_images: int = AUTO_MIN_IMAGES, cache: str | os.PathLike | None = None) -> Backend:
    """The backend `auto` picks for `model` (see the module docstring); its `.decision` says why.

    `calib`: preprocessed images (N, C, H, W), or a list of (1, C, H, W) images of varying size for
    segmentation, or a function returning either (called only when measuring); used when the card
    names no training data that loads. `n_images`: the job's size
    (None: a long job). `candidates`: backend names, or (name, build) pairs whose build() returns a
    callable (N, C, H, W) -> logits (default: default_candidates()). `cache`: the cache file.
    decision = {"backend", "source": "cache" | "measured" | "small job", "results": {name: figures}}.
    """
    model.eval()
    path = Path(cache) if cache is not None else cache_path()
    key = _key(model_digest(model), threads)
    entries = read_cache(path)
    entry = _lookup(entries, key)
    # Named candidates (auto-fp32's) are taken from the cache where it has them all, and the missing ones are
    # measured and added; the default auto takes whatever the cache decided for this model and machine.
    wanted = set(candidates) if candidates is not None and all(isinstance(c, str) for c in candidates) else None
    # An entry from before the int8 candidates (agreement judged on the calibration images themselves, no
    # "agreement_on") is measured anew.
    current = entry is not None and "agreement_on" in (entry.get("calib") or {})
    cached = entry.get("results") if current else None
    if isinstance(cached, dict) and (wanted is None or wanted <= set(cached)):
        # Only built-in names can be rebuilt from the cache (an injected candidate exists in one process).
        results = {k: v for k, v in cached.items() if k in NAMED and isinstance(v, dict)
                   and (wanted is None or k in wanted)}
        name = _pick(results, n_images)
        backend = build_named(name, model, threads=threads)
        return _decided(backend, name, {"source": "cache", "results": results}, n_images, path)
    if n_images is not None and n_images < min_images:
        backend = _fallback(model, threads)
        return _decided(backend, backend.name, {"source": "small job", "results": {}}, n_images, path,
                        f"{n_images} images, fewer than {min_images}: too few to repay measuring and compiling, "
                        "and no cached decision for this model and machine")
    known = {k: v for k, v in cached.items() if k in NAMED and isinstance(v, dict)} if isinstance(cached, dict) else {}
    todo = [c for c in (candidates if candidates is not None else default_candidates())
            if not isinstance(c, str) or c not in known]  # a cached entry gains what it lacked
    results, built = _measure_all(model, calib, batch_size, threads, todo, key, entries, path, known)
    if wanted is not None:
        results = {k: v for k, v in results.items() if k in wanted}
    name = _pick(results, n_images)
    backend = built.get(name) or build_named(name, model, threads=threads)
    return _decided(backend, name, {"source": "measured", "results": results}, n_images, path)


def _fallback(model: nn.Module, threads: int | None) -> Backend:
    """channels_last, or eager where folding would change the outputs (prepare_for_inference's check)."""
    try:
        return build_named(FALLBACK, model, threads=threads)
    except ValueError as e:
        log.info("auto: not folding: %s", e)
        return build_named("eager", model, threads=threads)


def _measure_all(model, calib, batch_size, threads, candidates, key, entries, path, known=None):
    """Measure the candidates on the calibration set, store their figures in the cache (beside the `known`
    figures of the same model and machine), and return all figures with the candidates that passed,
    already built (and compiled)."""
    seg = getattr(getattr(model, "card", None), "task", "classification") == "segmentation"
    own = None if seg else _own_data(model, CALIB_N)
    if own is not None:
        calib, calib_source = own
    else:
        calib_source = "the job's images"
        calib = calib() if callable(calib) else calib  # callers may defer decoding until it is needed
        if calib is None:
            raise UserError("backend 'auto' needs calibration images (calib=...) for a model whose card names "
                            "no training data")
        calib = calib[:SEG_CALIB_N] if seg else calib[:CALIB_N]
    batches = _batches(calib, batch_size or 16)
    # The int8 candidates calibrate on the first batches (QUANT_CALIB_N images); all are judged on the rest.
    n_quant = 0 if seg else max(1, min(len(batches) // 2, QUANT_CALIB_N // max(1, len(batches[0]))))
    quant = torch.cat(batches[:n_quant]) if n_quant else batches[0]
    log.info("auto: measuring backends on %d calibration images from %s (once per model and machine)",
             sum(len(b) for b in batches), calib_source)
    reference, _ = _predictions(TorchBackend("eager", model, False, 0.0), batches)
    results, built = dict(known or {}), {}
    example = batches[0][:2] if not seg else None
    for cand in candidates:
        name, build = cand if isinstance(cand, tuple) else (
            cand, lambda cand=cand: build_named(cand, model, example=example, threads=threads, calib=quant))
        if isinstance(cand, str) and (why := unsupported(cand)) is not None:
            log.info("auto: skipping %s: %s", cand, why)
            results[name] = {"ok": False, "error": why}
            continue
        results[name], run = measure(name, build, batches, reference, judged_from=n_quant)
        if run is not None:
            built[name] = run if isinstance(run, Backend) else _Wrapped(name, run)
    n_all = sum(len(b) for b in batches)
    n_cal = sum(len(b) for b in batches[:n_quant]) if n_quant < len(batches) else 0
    entry = {**key, "results": results, "calib": {"n": n_all, "source": calib_source, "int8_calibration": n_cal,
                                                  "agreement_on": n_all - n_cal},
             "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _store(path, entries, entry, key)
    return results, built


def _decided(backend: Backend, name: str, decision: dict, n_images: int | None, path: Path,
             note: str | None = None) -> Backend:
    """Attach the decision to the backend and say, in one line, what was chosen and why."""
    backend.decision = {"backend": name, **decision}
    if note is None:
        goal = ("the fastest" if n_images is None else
                f"the least expected time for {n_images} images, setup included,")
        note = (f"{goal} of those agreeing >= {100 * AGREEMENT:.1f}% with fp32 eager; "
                f"{decision['source']}: {_summary(decision['results'])}; cache {path}")
    log.info("auto: %s (%s)", name, note)
    return backend
