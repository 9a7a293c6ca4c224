"""MoCo v2 (Chen et al., 2020): InfoNCE of online queries against momentum keys and a queue.

    logits = [q . k+ , q . Q^T] / t     (q, k+ and the queue Q are L2-normalised; k+ from the target)
    L = CE(logits, 0), symmetrised: 1/2 [L(q_a, k_b) + L(q_b, k_a)]

After each step the keys of both views are enqueued (one queue per stage, oldest overwritten).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hicl.manifest import MethodConfig
from hicl.methods.base import Method
from hicl.models.heads import mlp


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoV2(Method):
    uses_target = True

    def __init__(self, cfg: MethodConfig, num_stages: int):
        super().__init__(cfg, num_stages)
        # Random unit vectors as the first negatives, as the reference implementation starts.
        self.register_buffer("queues", F.normalize(torch.randn(num_stages, cfg.queue_size, cfg.proj_dim), dim=2))
        self.register_buffer("queue_ptr", torch.zeros(num_stages, dtype=torch.long))
        self._pending: dict[int, torch.Tensor] = {}

    @staticmethod
    def make_projector(cfg: MethodConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_dim], hidden_bn=False)

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        queue = self.queues[stage]
        loss = 0.5 * (
            moco_loss(online_a, target_b, queue, self.cfg.temperature)
            + moco_loss(online_b, target_a, queue, self.cfg.temperature)
        )
        self._pending[stage] = F.normalize(torch.cat([target_a, target_b]).detach().float(), dim=1)
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        size = self.queues.shape[1]
        for stage, keys in self._pending.items():
            keys = keys[-size:]
            slots = (self.queue_ptr[stage] + torch.arange(keys.shape[0], device=keys.device)) % size
            self.queues[stage, slots] = keys
            self.queue_ptr[stage] = (self.queue_ptr[stage] + keys.shape[0]) % size
        self._pending.clear()
