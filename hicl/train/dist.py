"""Distributed training on PyTorch's own engine: torchrun launches, DistributedDataParallel syncs.

torchrun starts one process per GPU (or per CPU worker with gloo) and sets RANK, WORLD_SIZE and
LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT); hicl reads them here and never launches processes itself:

    torchrun --nproc_per_node=N -m hicl pretrain MANIFEST                       # one machine
    torchrun --nnodes=M --node_rank=I --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m hicl pretrain MANIFEST

Without torchrun (no WORLD_SIZE, or 1) every helper is a no-op and training is exactly single-process.

How the loop uses these helpers, in this order:

1. `env, device = init_distributed(resolve_device(runtime))`: reads the torchrun variables, pins the
   process to `cuda:LOCAL_RANK` on CUDA and initialises the process group (NCCL on CUDA, gloo on CPU).
2. `torch.manual_seed(manifest.seed)` before `build_model`: every rank builds the same initial weights
   (DDP also broadcasts rank 0's at wrapping). Generators that must differ per rank (augmentation,
   and the data order inside the rank's shard) are seeded with `rank_seed(seed + offset, env.rank)`;
   rank 0 gets the seed itself, so one process reproduces an unsharded run. The shard itself (which
   images a rank sees) comes from the data layer, from the same permutation on every rank.
3. `model = prepare_model(model, runtime, device)` (hicl.train.device: SyncBN when `runtime.sync_bn`
   and world > 1, device, channels_last, compile), then `build_optimizer(...)` on `model` (after
   SyncBN conversion, which replaces modules), then `ddp = wrap_ddp(model, device)`.
4. Each step: `stage_losses = ddp(batch)` (DDP's forward is `SSLModel.forward = stage_losses`; calling
   the wrapper is what lets it all-reduce the gradients), `loss = model.total_loss(stage_losses)`,
   backward, optimizer step, `model.after_optimizer_step(step, total_steps)` (on the unwrapped model).
   The per-rank loss is this rank's share; for logging, `mean_over_ranks(loss)` gives the global loss
   (call it only at logging steps: it synchronises the host).
5. `is_main()` alone writes the run directory, metrics, checkpoints and draws progress; checkpoints
   are taken from the unwrapped `model` (`model.backbone.state_dict()`, so wrappers never change
   keys). On `--resume` every rank loads the same checkpoint (then `barrier()` before training).
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

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hicl.collectives import rank, world_size
from hicl.errors import HiclError

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
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return env, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on the process that writes files and draws progress (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


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
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True)
