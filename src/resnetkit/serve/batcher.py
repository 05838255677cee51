"""Dynamic batching in the manner of Triton's dynamic batcher: a request's images wait at most
`max_wait_s` for others to join them, up to `max_batch` images, and the batch is one call of the model,
made on the one thread that owns it (so the event loop never runs the model, and the model never runs
twice at once).

While a batch runs, new images queue; the next batch takes them all (up to `max_batch`) at once, so
under load batches fill without waiting. One departure from Triton: the window is only waited out while
some accepted request is still being decoded (`expecting()` > 0), since no other image can join the
batch otherwise; a lone request on an idle server does not pay `max_wait_s`. Images of different sizes
(segmentation keeps each image's own size) or different operations are grouped, one call per group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


@dataclasses.dataclass
class _Item:
    op: str
    x: torch.Tensor
    future: asyncio.Future


class Batcher:
    """`await submit(op, xs)` -> one result per tensor of `xs`, computed by `run(op, batch)` where `batch`
    is (B, ...) and `run` returns B results. `on_batch(op, size)` is told each call's size (metrics);
    `depth()` is how many images wait; `expecting()` how many accepted images are still on their way
    (being decoded)."""

    def __init__(self, run: Callable[[str, torch.Tensor], list[Any]], *, max_batch: int, max_wait_s: float,
                 executor: ThreadPoolExecutor, on_batch: Callable[[str, int], None] = lambda op, n: None,
                 expecting: Callable[[], int] = lambda: 1):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.executor, self.on_batch, self.expecting = executor, on_batch, expecting
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, op: str, xs: list[torch.Tensor]) -> list[Any]:
        loop = asyncio.get_running_loop()
        items = [_Item(op, x, loop.create_future()) for x in xs]
        for it in items:
            self.queue.put_nowait(it)
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:  # a request that timed out or was dropped: its images are skipped, not run
                it.future.cancel()

    async def _collect(self) -> list[_Item]:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self.expecting() == 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return [it for it in batch if not it.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[tuple, list[_Item]] = {}
            for it in batch:
                groups.setdefault((it.op, tuple(it.x.shape)), []).append(it)
            for (op, _), group in groups.items():
                self.on_batch(op, len(group))
                try:
                    out = await loop.run_in_executor(self.executor, self.run, op, torch.stack([it.x for it in group]))
                except Exception as e:  # noqa: BLE001  (a failed call fails its requests, not the server)
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(e)
                    continue
                for it, r in zip(group, out):
                    if not it.future.done():
                        it.future.set_result(r)
