"""The data order: a fresh permutation per epoch, derived from (seed, epoch) alone.

Because every epoch's order and every batch's augmentation draws are functions of (seed, epoch,
step), a run resumed at any step sees exactly the batches the uninterrupted run saw, and N processes
sharing a global batch see the same images as one process would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch


def derived_generator(*keys: int) -> torch.Generator:
    """A torch.Generator seeded from a tuple of ints (e.g. (seed, epoch, step)), stable across runs."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Training drops the last partial batch so every step has the same global batch size."""
    return n // global_batch


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int, start: int = 0) -> Iterator[
        tuple[int, torch.Tensor]]:
    """Yield (step_in_epoch, indices (global_batch,)) for one epoch, starting at `start`."""
    perm = torch.randperm(n, generator=derived_generator(seed, epoch))
    for i in range(start, steps_per_epoch(n, global_batch)):
        yield i, perm[i * global_batch:(i + 1) * global_batch]


def shard(x: torch.Tensor, part: int, parts: int) -> torch.Tensor:
    """Chunk `part` of `parts` equal chunks along dim 0 (the caller checks divisibility)."""
    size = x.shape[0] // parts
    return x[part * size:(part + 1) * size]
