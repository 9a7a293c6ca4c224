"""SimSiam (Chen & He, 2021): a predictor on one branch, stop-gradient on the other.

    L = 1/2 D(p_a, sg(z_b)) + 1/2 D(p_b, sg(z_a)),   D(p, z) = -cos(p, z)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hicl.config import Width
from hicl.layers import make_predictors, mlp
from hicl.methods.base import Method
from hicl.methods.configs import SimSiamConfig
from hicl.methods.registry import register



def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, sg(z)) averaged over the batch; gradients flow into `p` only."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (negative_cosine(p_a, z_b) + negative_cosine(p_b, z_a))


@register
class SimSiam(Method):
    Config = SimSiamConfig

    def __init__(self, cfg: SimSiamConfig, num_stages: int):
        super().__init__(cfg, num_stages)
        self.predictors = make_predictors(cfg.proj_dim, cfg.pred_hidden_dim, num_stages)

    @staticmethod
    def make_projector(cfg: SimSiamConfig, in_dim: int) -> nn.Module:
        dims = [in_dim, cfg.proj_hidden_dim, cfg.proj_hidden_dim, cfg.proj_dim]
        return mlp(dims, last_bn=True, last_bn_affine=False)

    def stage_loss(self, stage, online_a, online_b, target_a=None, target_b=None):
        predictor = self.predictors[stage]
        return simsiam_loss(predictor(online_a), predictor(online_b), online_a, online_b)

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return list(self.predictors.parameters()) if self.cfg.fixed_predictor_lr else []
