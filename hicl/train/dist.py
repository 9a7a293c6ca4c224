"""Distributed training on PyTorch's own engine: torchrun launches, DistributedDataParallel syncs.

torchrun starts one process per GPU (or per CPU worker with gloo) and sets RANK, WORLD_SIZE and
LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT); hicl reads them here and never launches processes itself:

    torchrun --nproc_per_node=N -m hicl pretrain MANIFEST                       # one machine
    torchrun --nnodes=M --node_rank=I --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m hicl pretrain MANIFEST

Without torchrun (no WORLD_SIZE, or 1) every helper is a no-op and training is exactly single-process.

How `hicl.train.loop.pretrain` uses these helpers:

1. `env, device = init_distributed(resolve_device(runtime))`: reads the torchrun variables, pins the
   process to `cuda:LOCAL_RANK` on CUDA and initialises the process group (NCCL on CUDA, gloo on CPU).
2. `torch.manual_seed(manifest.seed)` before `build_model`: every rank builds the same initial weights
   (DDP also broadcasts rank 0's at wrapping). The augmentation generator differs per rank:
   `rank_seed(seed + offset, env.rank)`, with rank 0 keeping the seed itself, so one process draws what
   rank 0 draws. The data order is the same permutation on every rank; the data layer gives each rank
   its share of every global batch.
3. `prepare_model` (SyncBN when `runtime.sync_bn` and world > 1, device, channels_last, compile), then
   `build_optimizer` (after SyncBN conversion, which replaces modules), then `wrap_ddp`.
4. Each step calls the wrapper (`SSLModel.forward` is `stage_losses`; calling the wrapper is what lets
   it all-reduce the gradients) and `model.after_optimizer_step` on the unwrapped model. At logging
   steps only (it synchronises the host) `mean_over_ranks` gives the job's loss, and `max_over_ranks`
   lets the ranks agree on a stop signal.
5. `on_main` runs what writes files (run directory, checkpoints) on rank 0 and makes every rank fail
   if it failed; checkpoints are taken from the unwrapped model, with every rank's augmentation
   generator (`gather_objects`). On `--resume` every rank loads the same checkpoint.
6. `shutdown()` at the end (also on error).

The objectives gather what couples samples across the global batch (`hicl.collectives`): SimCLR's
negatives and Barlow Twins' cross-correlation with gradients, MoCo's keys before enqueueing. DDP
averages gradients over ranks, which with those gathers equals the gradient of one process holding
the whole batch (`tests/test_distributed.py`). BatchNorm layers normalise over each rank's share unless
`runtime.sync_bn` (CUDA only). Buffers are not broadcast each step (MoCo's queues would cost a copy
of every queue per step, and they are identical on every rank anyway); BatchNorm running statistics are
therefore rank 0's own (or global with SyncBN) in the checkpoint.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hicl.collectives import rank, world_size
from hicl.errors import HiclError

_DDP_OPTIONS = inspect.signature(DistributedDataParallel.__init__).parameters

# Per-rank seeds: rank r adds r times a large prime, far from the small offsets the loop adds per purpose.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise HiclError(f"environment {name}: expected an integer (set by torchrun), got {raw!r}") from None


def read_env() -> DistEnv:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; (0, 1, 0) when absent."""
    env = DistEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise HiclError(f"environment RANK={env.rank}, WORLD_SIZE={env.world_size}: expected 0 <= RANK < WORLD_SIZE")
    return env


def init_distributed(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the torchrun job, if any: (the rank's environment, the rank's device)."""
    env = read_env()
    if not env.distributed:
        return env, device
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise HiclError(f"LOCAL_RANK {env.local_rank}: only {torch.cuda.device_count()} CUDA devices here")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
        except (ValueError, RuntimeError) as exc:  # e.g. WORLD_SIZE set by hand without MASTER_ADDR
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HiclError(f"torch.distributed ({backend}): could not join the job: {first}; start it with torchrun") from None
    return env, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on the process that writes files and draws progress (rank 0, or the only process)."""
    return rank() == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of `rank`'s own generators: `seed` on rank 0, distinct and reproducible on the others."""
    return seed + rank * RANK_SEED_STRIDE


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all processes (a copy; `t` itself on one process)."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every process's `value`, known to all of them (a collective: every rank calls it)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj: object) -> list:
    """Every process's `obj` in rank order (a collective); `[obj]` with one process."""
    if world_size() == 1:
        return [obj]
    objects: list = [None] * world_size()
    dist.all_gather_object(objects, obj)
    return objects


def on_main(action: Callable[[], None]) -> None:
    """`action()` on rank 0 alone (files, the run directory). If it fails there, every rank raises, so
    that none waits forever at its next collective for a rank that is gone."""
    error: Exception | None = None
    if is_main():
        try:
            action()
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            error = exc
    if world_size() > 1:
        succeeded = [error is None]
        dist.broadcast_object_list(succeeded, src=0)
        if not succeeded[0] and error is None:
            raise HiclError("stopped: rank 0 failed (its error is printed by rank 0)")
    if error is not None:
        raise error


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm as SyncBatchNorm (statistics over all processes); unchanged with one process."""
    if world_size() == 1:
        return model
    if device.type != "cuda":
        raise HiclError("runtime.sync_bn: SyncBatchNorm needs CUDA devices (set it to false on CPU)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun; `model` itself with one process."""
    if world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast before each forward; newer torch spells that `forward_sync_buffers` and warns
    # about the old name (both still sync at init, where every rank's buffers are the same anyway).
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_OPTIONS
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True, **no_buffer_sync)
