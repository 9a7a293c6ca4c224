"""Collectives the objectives use when a batch is split over several processes (DDP).

With one process (no process group, or world size 1) every function returns its input unchanged, so
single-process training computes exactly what it computed before distributed support existed. The
process group itself is set up by `hicl.train.dist`.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0 in rank order, differentiable.

    The backward pass sums, over ranks, the gradients that reach each rank's slice, so a loss computed
    from gathered tensors on every rank, followed by DDP's gradient averaging, yields the gradient of
    the mean of the per-rank losses, as one process holding the whole batch would.
    """
    if world_size() == 1:
        return t
    with warnings.catch_warnings():  # deprecated in newer torch; its replacement is private API
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)


@torch.no_grad()
def gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0 in rank order, without gradient (e.g. MoCo's keys)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
