"""SimCLR (Chen et al., 2020): NT-Xent over the 2B views of a batch.

For each of the 2B normalised projections u_i with positive u_j (the other view of the same image):

    l_i = -log( exp(u_i . u_j / t) / sum_{k != i} exp(u_i . u_k / t) )

The denominator holds the positive and 2B - 2 negatives; L is the mean of l_i over all 2B anchors.
Under DDP, B is the global batch: each process gathers every process's projections (with gradients)
as candidates and averages l_i over its own 2b anchors; the mean over processes (DDP's gradient
average) is then the L of the whole batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hicl.collectives import gather_with_grad, rank
from hicl.config import PositiveFloat
from hicl.layers import mlp
from hicl.methods.base import Method
from hicl.methods.configs import SimCLRConfig
from hicl.methods.registry import register



def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of this process's 2b anchors against the 2B views of the (gathered) global batch."""
    n = z_a.shape[0]
    all_a, all_b = gather_with_grad(z_a), gather_with_grad(z_b)
    total = all_a.shape[0]
    candidates = F.normalize(torch.cat([all_a, all_b]).float(), dim=1)
    anchors = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    # Global row of each local anchor: view a at offset + i, view b at total + offset + i.
    local = torch.arange(n, device=anchors.device) + rank() * n
    own = torch.cat([local, local + total])
    positives = torch.cat([local + total, local])
    logits = anchors @ candidates.T / temperature
    logits[torch.arange(2 * n, device=anchors.device), own] = float("-inf")
    return F.cross_entropy(logits, positives)


@register
class SimCLR(Method):
    Config = SimCLRConfig

    @staticmethod
    def make_projector(cfg: SimCLRConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        return nt_xent_loss(online_a, online_b, self.cfg.temperature)
