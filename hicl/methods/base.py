"""The interface every objective implements, and the registry the manifest's `method.name` selects.

A method sees, per stage, the projections of the two views from the online network (and from the
momentum target network when `uses_target`), and returns that stage's loss. Predictors, queues and
other state that belong to the objective live on the method; projectors belong to the online network
(so that BYOL/MoCo targets average them too) and are built by `make_projector`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from hicl.manifest import MethodConfig
from hicl.models.heads import mlp


class Method(nn.Module, ABC):
    uses_target: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig, num_stages: int):
        super().__init__()
        self.cfg = cfg
        self.num_stages = num_stages

    @staticmethod
    @abstractmethod
    def make_projector(cfg: MethodConfig, in_dim: int) -> nn.Module:
        """The per-stage projection head this objective uses."""

    @abstractmethod
    def stage_loss(
        self,
        stage: int,
        online_a: torch.Tensor,
        online_b: torch.Tensor,
        target_a: torch.Tensor | None,
        target_b: torch.Tensor | None,
    ) -> torch.Tensor:
        """The loss of one stage from the projections of views a and b."""

    def target_momentum(self, step: int, total_steps: int) -> float:
        """EMA decay of the momentum target at `step` (constant `method.momentum` unless overridden)."""
        return self.cfg.momentum

    def after_step(self) -> None:
        """Called once per optimiser step, after the losses of every stage were computed."""

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters that keep the base learning rate instead of following the schedule."""
        return []


def make_predictors(cfg: MethodConfig, num_stages: int) -> nn.ModuleList:
    """One predictor per stage, Linear -> BN -> ReLU -> Linear through `pred_hidden_dim` (SimSiam, BYOL)."""
    return nn.ModuleList(mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim]) for _ in range(num_stages))
