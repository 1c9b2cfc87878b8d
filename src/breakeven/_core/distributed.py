"""The default process group of ``torch.distributed``: checks, world size and rank, and the
sums and gathers over the ranks (each rank holds its own part of the data)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_distributed(distributed: bool) -> None:
    """``distributed=True`` needs an initialised default process group (e.g. under torchrun)."""
    if not isinstance(distributed, bool):
        raise ValueError(f"distributed must be True or False, got {distributed!r}")
    if distributed and not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        raise ValueError(
            "distributed=True needs torch.distributed initialised (torchrun and "
            "torch.distributed.init_process_group); each rank passes its own part of the data"
        )


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over the ranks of the default process group (every rank gets it).

    ``torch.autograd.grad`` bypasses DDP's gradient hooks, so every product that sums over
    the data is reduced explicitly here."""
    t = t.contiguous()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def all_gather_rows(t: Tensor) -> Tensor:
    """The rows of ``t`` of every rank, concatenated in rank order (the same number of rows
    on every rank)."""
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)
