"""torchrun support: process-group set-up and the one place that wraps a model in DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from resnetkit.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set), else a single process.

    gloo on CPU, nccl on CUDA; each process uses the GPU of its LOCAL_RANK.
    """
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}" if cuda else "cpu"))


def wrap(model: torch.nn.Module, d: Dist, sync_bn: bool) -> torch.nn.Module:
    """The training-time model: SyncBatchNorm and DDP when there are several processes.

    Callers keep the unwrapped module for saving, EMA and evaluation.
    """
    if d.world == 1:
        return model
    if sync_bn:
        if d.device.type == "cpu":
            raise UserError("model.sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); drop the option")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda"
                                                     else None)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers (BN running statistics) before evaluating or saving."""
    if d.world > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)
