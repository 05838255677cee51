"""What `run.amp = "auto"` and `run.channels_last = "auto"` become on this machine, decided once at the start
of a run and written into its config (config.json, the checkpoint), so a resumed run continues exactly.

amp auto: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
else none (fp32). channels_last auto: on a GPU, with reduced precision on a GPU of compute capability 7.0 or
more (tensor cores want NHWC); on a CPU, by timing a few training steps of the run's own model and batch
shape each way. With run.deterministic both resolve to the plain choice (fp32, contiguous): a timing
decides nothing there, and the numbers are the same on every machine.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from contextlib import nullcontext

import torch

from resnetkit.errors import ConfigError
from resnetkit.export.backends import cpu_flags
from resnetkit.train import distributed
from resnetkit.train.config import TrainConfig

log = logging.getLogger("resnetkit.train")

MEASURE_BATCH = 32  # images per timed step on a CPU: the layout's gain per image barely depends on the batch
MEASURE_WARMUP = 1  # untimed steps each way first: the first call allocates and picks (and packs) kernels
MEASURE_PAIRS = 4  # timed steps each way at most, alternating, after the warm-up
MIN_PAIRS = 2  # ... at least this many, however slow the model
MEASURE_S = 4.0  # ... and no more timed pairs beyond MIN_PAIRS once this many seconds are spent


def autocast(device: torch.device, amp: str):
    """The one precision switch: bf16 or fp16 autocast when asked, fp32 otherwise (no second code path)."""
    if amp in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    return nullcontext()


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX), as its flags say (RESNETKIT_CPU_FLAGS can pretend
    a CPU without them: resnetkit.export.backends.cpu_flags)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def auto_amp(device: torch.device) -> tuple[str, str]:
    """(amp, why) for run.amp = "auto" on `device`."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} computes bf16"
        return "none", f"{torch.cuda.get_device_name(device)} has no bf16 (fp16 needs run.amp='fp16')"
    if device.type == "cpu":
        if cpu_has_bf16():
            return "bf16", "the CPU has AVX512-BF16/AMX"
        return "none", "the CPU has no native bf16 (AVX512-BF16 or AMX)"
    return "none", f"no bf16 rule for {device.type}"


def _timed_step(model: torch.nn.Module, task, x: torch.Tensor, y, amp: str) -> float:
    """Seconds of one forward + backward of `model` on `x` (both already in the layout being timed)."""
    t0 = time.perf_counter()
    with autocast(x.device, amp):
        loss = task.loss(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure_channels_last(model: torch.nn.Module, task, micro_batch: int, amp: str) -> tuple[bool, str]:
    """Time training steps of a copy of `model` on a batch of the task's own data, contiguous vs channels_last.
    The run's model, its RNG streams and its data order are untouched."""
    n = min(micro_batch, MEASURE_BATCH, len(task.train_set))
    with torch.random.fork_rng(devices=[]):
        params = task.sample(n, torch.Generator().manual_seed(0))
        x, y = task.batch(torch.arange(n), params)
        # One copy of the model per layout, converted once: converting one copy back and forth between steps
        # timed the conversion and the kernels' re-packing, and once picked contiguous for a segmentation
        # model that ran 1.2x faster channels_last.
        fmts = {False: torch.contiguous_format, True: torch.channels_last}
        probes = {cl: copy.deepcopy(model).train().to(memory_format=f) for cl, f in fmts.items()}
        inputs = {cl: x.contiguous(memory_format=f) for cl, f in fmts.items()}
        for _ in range(MEASURE_WARMUP):
            for cl in fmts:
                _timed_step(probes[cl], task, inputs[cl], y, amp)
        # Alternating, so a burst of load from elsewhere hits both layouts alike; the fastest of each counts.
        t, start = {False: [], True: []}, time.perf_counter()
        while len(t[True]) < MIN_PAIRS or (len(t[True]) < MEASURE_PAIRS and time.perf_counter() - start < MEASURE_S):
            for cl in fmts:
                t[cl].append(_timed_step(probes[cl], task, inputs[cl], y, amp))
    plain, nhwc = min(t[False]), min(t[True])
    faster = nhwc < plain
    return faster, f"timed {1e3 * plain:.1f} ms contiguous vs {1e3 * nhwc:.1f} ms channels_last per {n}-image step"


def resolve_precision(cfg: TrainConfig, d, measure) -> tuple[TrainConfig, dict]:
    """`cfg` with run.amp and run.channels_last "auto" replaced by this machine's choice (logged on rank 0;
    every rank takes rank 0's timing), the explicit choices checked against the device, and {key: {"value",
    "why"}} for each automatic one. `measure(amp)` -> (faster, why) times the two layouts on a CPU
    (measure_channels_last on a copy of the run's model and task)."""
    r, device = cfg.run, d.device
    amp, amp_why = r.amp, "asked for"
    if amp == "auto":
        amp, amp_why = ("none", "run.deterministic") if r.deterministic else auto_amp(device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.amp='fp16' needs a CUDA device (fp16 training needs its gradient scaler); this run "
                          f"is on {device.type}: use bf16, none or auto", )
    cl, cl_why = r.channels_last, "asked for"
    if cl == "auto":
        if r.deterministic:
            cl, cl_why = False, "run.deterministic"
        elif device.type == "cuda":
            cl = amp != "none" and torch.cuda.get_device_capability(device) >= (7, 0)
            cl_why = "tensor cores with reduced precision" if cl else "fp32 or no tensor cores"
        else:
            cl, cl_why = measure(amp) if d.main else (False, "")
            cl = bool(distributed.all_reduce_sum(torch.tensor(float(cl), device=device), d) > 0)  # rank 0's
    if d.main and "auto" in (r.amp, r.channels_last):
        log.info("precision: amp %s (%s); channels_last %s (%s)", amp, amp_why, cl, cl_why)
    why = {k: {"value": v, "why": w} for k, v, w, given in (("run.amp", amp, amp_why, r.amp),
                                                           ("run.channels_last", bool(cl), cl_why, r.channels_last))
           if given == "auto"}
    return dataclasses.replace(cfg, run=dataclasses.replace(r, amp=amp, channels_last=bool(cl))), why
