"""Figures of a batch of embeddings that tell a healthy representation from a collapsed one.

- `spread(z)`: sqrt(d) x the mean over dimensions of the batch standard deviation of the L2-normalised
  rows; uniformly spread unit vectors give about 1, a constant output 0 (SimSiam, Chen & He 2021, Fig. 2).
- `effective_rank(z)`: exp(-sum_k p_k log p_k), p_k = s_k / sum s over the singular values of z (RankMe,
  Garrido et al. 2023): from 1 (rank one) to min(N, d).
- `view_cosine(a, b)`: the mean cosine of paired rows (two views of each image).

Used by the training-time collapse monitor (`hicl.train.collapse`) and by the invariance probe.
"""

from __future__ import annotations

import math

import torch


def spread(z: torch.Tensor) -> torch.Tensor:
    """sqrt(d) * mean_j std_i(z_i / ||z_i||)_j: about 1 for spread-out outputs, 0 for a constant one."""
    unit = torch.nn.functional.normalize(z.float(), dim=1)
    return unit.std(dim=0, unbiased=False).mean() * math.sqrt(z.shape[1])


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """exp(-sum_k p_k log p_k) with p_k = s_k / sum s over the singular values s of `z` ([N, d])."""
    singular = torch.linalg.svdvals(z.float())
    p = singular / singular.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum())


def view_cosine(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(z_a.float(), z_b.float(), dim=1).mean()
