"""Barlow Twins (Zbontar et al., 2021): make the cross-correlation of the two views the identity.

    C = BN(z_a)^T BN(z_b) / N            (BN: per-dimension standardisation over the batch)
    L = scale * ( sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 )

Defaults follow the paper's supplement: scale 1/32, lambda 3.9e-3.
"""

from __future__ import annotations

import torch
from torch import nn

from hicl.manifest import MethodConfig
from hicl.methods.base import Method
from hicl.models.heads import mlp


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(var + eps) over the batch, biased variance (as BatchNorm1d)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, scale: float) -> torch.Tensor:
    c = standardize(z_a).T @ standardize(z_b) / z_a.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


class BarlowTwins(Method):
    @staticmethod
    def make_projector(cfg: MethodConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        return barlow_twins_loss(online_a.float(), online_b.float(), self.cfg.barlow_lambda, self.cfg.barlow_scale)
