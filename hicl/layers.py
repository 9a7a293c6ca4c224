"""Layers shared by the methods and the models: MLP heads and per-stage predictors.

They sit below both `hicl.methods` and `hicl.models`, so that methods can build their heads without
importing the models package (which imports the method registry).
"""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], hidden_bn: bool = True, last_bn: bool = False, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear layers through `dims` with BN + ReLU between them; optional BN after the last.

    SimSiam's projector is mlp([d, h, h, o], last_bn=True, last_bn_affine=False); BYOL's projector and
    predictor mlp([d, h, o]); MoCo v2's mlp([d, h, o], hidden_bn=False).
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=not (last_bn if last else hidden_bn)))
        if not last:
            if hidden_bn:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine))
    return nn.Sequential(*layers)


def make_predictors(proj_dim: int, hidden_dim: int, num_stages: int) -> nn.ModuleList:
    """One predictor per stage, Linear -> BN -> ReLU -> Linear through `hidden_dim` (SimSiam, BYOL)."""
    return nn.ModuleList(mlp([proj_dim, hidden_dim, proj_dim]) for _ in range(num_stages))
