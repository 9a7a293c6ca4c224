"""BYOL (Grill et al., 2020): the online predictor regresses the momentum target's projection.

    L = 1/2 [ (2 - 2 cos(p_a, sg(z'_b))) + (2 - 2 cos(p_b, sg(z'_a))) ]

z' comes from the target network, an exponential moving average of the online backbone, adapters,
embedders and projectors (decay `method.momentum`, raised to 1 along a cosine; see `target_momentum`).
The two directions are averaged, so the loss lies in [0, 4] and equals 2 - 2 cos for one pair.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hicl.config import Momentum, Width
from hicl.layers import make_predictors, mlp
from hicl.methods.base import Method
from hicl.methods.configs import BYOLConfig
from hicl.methods.registry import register



def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, sg(z)), the squared distance of the unit vectors, averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def byol_loss(p_a: torch.Tensor, p_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (regression_loss(p_a, t_b) + regression_loss(p_b, t_a))


@register
class BYOL(Method):
    Config = BYOLConfig
    uses_target = True

    def __init__(self, cfg: BYOLConfig, num_stages: int):
        super().__init__(cfg, num_stages)
        self.predictors = make_predictors(cfg.proj_dim, cfg.pred_hidden_dim, num_stages)

    @staticmethod
    def make_projector(cfg: BYOLConfig, in_dim: int) -> nn.Module:
        return mlp([in_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def target_momentum(self, step: int, total_steps: int) -> float:
        """tau = 1 - (1 - base) * (cos(pi * step / total) + 1) / 2: from `method.momentum` up to 1."""
        return 1 - (1 - self.cfg.momentum) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        predictor = self.predictors[stage]
        return byol_loss(predictor(online_a), predictor(online_b), target_a, target_b)
