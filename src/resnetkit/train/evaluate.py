"""Evaluation over an in-memory split: loss, top-1 / top-5 and the confusion matrix, sharded over ranks."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from resnetkit.data import ImageSet, normalize
from resnetkit.train import distributed
from resnetkit.train.distributed import Dist


def autocast(device: torch.device, amp: str):
    """The one precision switch: bf16 autocast when asked, fp32 otherwise (no second code path)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageSet, *, batch_size: int = 500, amp: str = "none",
             channels_last: bool = False, d: Dist = Dist()) -> dict:
    """Returns {"loss", "top1", "top5", "n", "confusion" (K, K) int64 tensor: rows true, cols predicted}.

    Each rank evaluates a contiguous slice of the split; the sums are all-reduced.
    """
    model.eval()
    device = next(model.parameters()).device
    k = data.num_classes
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    n = len(data)
    lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    for i in range(lo, hi, batch_size):
        x = normalize(data.images[i:min(i + batch_size, hi)].to(device), mean, std)
        y = data.labels[i:min(i + batch_size, hi)].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, k), dim=1).indices  # (B, 5)
        top5 += (top == y[:, None]).any(dim=1).sum()
        confusion += torch.bincount(y * k + top[:, 0], minlength=k * k)
    for t in (loss_sum, top5, confusion):
        distributed.all_reduce_sum(t, d)
    confusion = confusion.view(k, k).cpu()
    correct = int(confusion.diag().sum())
    return {"n": n, "loss": float(loss_sum) / n, "top1": correct / n, "top5": int(top5) / n,
            "confusion": confusion}
