"""MoCo v2 (Chen et al., 2020): InfoNCE of online queries against momentum keys and a queue.

    logits = [q . k+ , q . Q^T] / t     (q, k+ and the queue Q are L2-normalised; k+ from the target)
    L = CE(logits, 0), symmetrised: 1/2 [L(q_a, k_b) + L(q_b, k_a)]

As in the reference implementation, the loss reads a snapshot of the queue and then enqueues the keys
of both views (one queue per stage, oldest overwritten); under DDP the keys of every process are
gathered first, so all queues hold the keys of the whole batch and stay identical across processes.
No state is carried between the loss and the optimiser step.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hicl.collectives import gather
from hicl.config import Momentum, PositiveFloat
from hicl.layers import mlp
from hicl.methods.base import Method
from hicl.methods.configs import MoCoV2Config
from hicl.methods.registry import register



def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@register
class MoCoV2(Method):
    Config = MoCoV2Config
    uses_target = True

    def __init__(self, cfg: MoCoV2Config, num_stages: int):
        super().__init__(cfg, num_stages)
        # Random unit vectors as the first negatives, as the reference implementation starts.
        self.register_buffer("queues", F.normalize(torch.randn(num_stages, cfg.queue_size, cfg.proj_dim), dim=2))
        self.register_buffer("queue_ptr", torch.zeros(num_stages, dtype=torch.long))

    @staticmethod
    def make_projector(cfg: MoCoV2Config, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_dim], hidden_bn=False)

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        # A snapshot: backward needs the negatives as they were, and the enqueue below writes in place.
        queue = self.queues[stage].clone()
        loss = 0.5 * (
            moco_loss(online_a, target_b, queue, self.cfg.temperature)
            + moco_loss(online_b, target_a, queue, self.cfg.temperature)
        )
        self.enqueue(stage, torch.cat([target_a, target_b]))
        return loss

    @torch.no_grad()
    def enqueue(self, stage: int, keys: torch.Tensor) -> None:
        """Write the L2-normalised keys of every process at the stage's pointer (a ring buffer)."""
        size = self.queues.shape[1]
        keys = F.normalize(gather(keys.detach()).float(), dim=1)[-size:]
        slots = (self.queue_ptr[stage] + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queues[stage, slots] = keys.to(self.queues.dtype)
        self.queue_ptr[stage] = (self.queue_ptr[stage] + keys.shape[0]) % size
