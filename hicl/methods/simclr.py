"""SimCLR (Chen et al., 2020): NT-Xent over the 2B views of a batch.

For each of the 2B normalised projections u_i with positive u_j (the other view of the same image):

    l_i = -log( exp(u_i . u_j / t) / sum_{k != i} exp(u_i . u_k / t) )

The denominator holds the positive and 2B - 2 negatives; L is the mean of l_i over all 2B anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hicl.manifest import MethodConfig
from hicl.methods.base import Method
from hicl.models.heads import mlp


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z_a.shape[0]
    u = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    logits = u @ u.T / temperature
    logits.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
    return F.cross_entropy(logits, positives)


class SimCLR(Method):
    @staticmethod
    def make_projector(cfg: MethodConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        return nt_xent_loss(online_a, online_b, self.cfg.temperature)
