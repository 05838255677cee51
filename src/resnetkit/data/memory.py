"""Whether an image folder is held in memory or streamed (data.stream=auto), by what each path costs on this
machine: measured, not estimated.

  memory  the in-memory path holds every image decoded at image_size; the bytes it keeps per image are
          measured (tracemalloc) by running that path on a sample of the folder, and the total must fit in
          MEMORY_FRACTION of the memory available (the rest is for the model, optimizer and activations).
  time    the in-memory path decodes every image once, serially, before the first step; the streamed path
          decodes them again every epoch, in its DataLoader workers. Holding them pays off only when the run
          plans more epochs than the workers decode in parallel; with the planned epochs unknown (None) the
          decision is by memory alone.

A folder that does not fit is streamed under data.stream=auto and refused in one line under data.stream=off.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnetkit.data import datasets, folder
from resnetkit.errors import ConfigError, DataError

MEMORY_FRACTION = 0.5  # of the available memory, for the decoded images; the rest is the run's working memory
SAMPLE = 16  # images decoded to measure the per-image cost (about 0.3 s of 375x500 JPEGs)


@dataclass(frozen=True)
class PerImage:
    """What the in-memory path costs per image, measured on a sample: bytes it keeps, seconds to decode."""

    bytes: float
    decode_s: float
    sampled: int  # images measured (unreadable ones are left out)


def measure(paths: Sequence[str | bytes | os.PathLike], image_size: int, channels: int,
            sample: int = SAMPLE) -> PerImage | None:
    """Run the in-memory path (decode into one array, then the statistics) on `sample` images spread evenly over
    `paths`; None when none of them can be read. Bytes are what stays allocated afterwards, per image."""
    step = max(1, len(paths) // sample)
    picked = [Path(os.fsdecode(p)) for p in paths[::step][:sample]]
    try:  # once untraced and untimed: the first decode imports PIL's plugins, which stay allocated
        folder.load_image(picked[0], image_size, channels)
    except DataError:
        pass
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        try:
            images, labels = folder.read_items([(p, 0) for p in picked], image_size, channels)
        except DataError:  # none readable: the loader itself names the bad images later
            return None
        seconds = time.perf_counter() - t0
        datasets.channel_stats(images)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        if started:
            tracemalloc.stop()
    return PerImage(bytes=held / len(labels), decode_s=seconds / len(labels), sampled=len(labels))


def available_memory() -> int:
    """Bytes this process may still allocate: the kernel's MemAvailable, lowered by a cgroup limit if one is set."""
    avail = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2, v1
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            avail.append(int(Path(limit).read_text()) - int(Path(used).read_text()))
        except (OSError, ValueError):  # absent, or "max": no limit
            pass
    if not avail:  # not Linux
        avail.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(0, min(avail))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB" if b < 10 * 2**20 else f"{b / 2**20:,.0f} MiB" if b < 10 * 2**30 else \
        f"{b / 2**30:,.1f} GiB"


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:,.0f} s"


def choose_stream(paths: Sequence[str | bytes | os.PathLike], image_size: int, channels: int, options,
                  planned_epochs: float | None = None, *, available_bytes: int | None = None) -> tuple[bool, str]:
    """(stream, why) for an image folder of `paths` (train and eval images), as `options` (a StreamOptions:
    stream, workers, auto_augment, random_erase) and the module docstring say.

    `planned_epochs`: the run's length in epochs (None: unknown; memory alone decides); `available_bytes`
    overrides available_memory(). `why` states the measured memory and decode-time figures for the log.
    Raises ConfigError when stream='off' cannot be honoured.
    """
    streaming_only = options.auto_augment != "none" or options.random_erase > 0
    if options.stream == "on":
        return True, "data.stream=on"
    if options.stream == "off" and streaming_only:
        raise ConfigError("stream='off' cannot apply auto_augment or random_erase: they work on streamed data")
    if streaming_only:
        return True, "data.stream=auto: auto_augment / random_erase work on streamed data"
    n, mode = len(paths), f"data.stream={options.stream}"
    cost = measure(paths, image_size, channels)
    if cost is None:  # the in-memory loader names the unreadable images (or refuses them with strict)
        return options.stream == "auto", f"{mode}: none of the sampled images could be read to measure them"
    avail = available_memory() if available_bytes is None else available_bytes
    held = n * cost.bytes
    memory = (f"{_mib(held)} held, {cost.bytes / 1024:,.0f} KiB per image measured, of {_mib(avail)} available")
    if held > MEMORY_FRACTION * avail:
        if options.stream == "off":
            raise ConfigError(f"stream='off': {n} images at {image_size} px would hold {_mib(held)} in memory "
                              f"({cost.bytes / 1024:,.0f} KiB each, measured), more than {MEMORY_FRACTION:.0%} of the "
                              f"{_mib(avail)} available; stream them (stream='auto' or 'on') or lower image_size")
        return True, f"{mode}: in memory would not fit ({memory}; at most {MEMORY_FRACTION:.0%} is used)"
    once = n * cost.decode_s
    parallel = max(1, min(options.workers, _cpus()))
    per_epoch = once / parallel  # what the streamed path spends decoding, per epoch, in `parallel` workers
    decode = f"decoding once takes {_secs(once)}; streamed, {parallel} workers spend {_secs(per_epoch)} per epoch"
    if planned_epochs is None:
        decode += ", planned epochs unknown"
    else:
        decode += f" x {planned_epochs:,.2f} planned epochs"
        if options.stream == "auto" and planned_epochs * per_epoch < once:
            return True, f"{mode}: streaming decodes less ({decode}; {memory})"
    return False, f"{mode}: {memory}; {decode}"
