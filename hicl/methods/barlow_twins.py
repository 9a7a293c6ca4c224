"""Barlow Twins (Zbontar et al., 2021): make the cross-correlation of the two views the identity.

    C = BN(z_a)^T BN(z_b) / N            (BN: per-dimension standardisation over the batch)
    L = scale * ( sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 )

Defaults follow the paper's supplement: scale 1/32, lambd 3.9e-3. Under DDP, N is the global batch:
the projections of every process are gathered (with gradients) before the standardisation, so C and
L are those of the whole batch, the same on every process.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hicl.collectives import gather_with_grad
from hicl.config import NonNegativeFloat, PositiveFloat
from hicl.layers import mlp
from hicl.methods.base import Method
from hicl.methods.configs import BarlowTwinsConfig
from hicl.methods.registry import register



def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(var + eps) over the batch, biased variance (as BatchNorm1d)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, scale: float) -> torch.Tensor:
    z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    c = standardize(z_a).T @ standardize(z_b) / z_a.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


@register
class BarlowTwins(Method):
    Config = BarlowTwinsConfig

    @staticmethod
    def make_projector(cfg: BarlowTwinsConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        return barlow_twins_loss(online_a.float(), online_b.float(), self.cfg.lambd, self.cfg.scale)
