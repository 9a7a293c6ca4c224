"""The interface every objective implements, and the config fields every objective shares.

A method sees, per stage, the projections of the two views from the online network (and from the
momentum target network when `uses_target`), and returns that stage's loss. Predictors, queues and
other state that belong to the objective live on the method; projectors belong to the online network
(so that BYOL/MoCo targets average them too) and are built by `make_projector`.

A method module defines `Config` (a `MethodConfig` subclass whose `name` is a one-value literal:
the name the manifest uses) and decorates its class with `hicl.methods.registry.register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from hicl.methods.configs import MethodConfig



class Method(nn.Module, ABC):
    Config: ClassVar[type[MethodConfig]]
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
        """The loss of one stage from the projections of views a and b (this process's share of the batch)."""

    def target_momentum(self, step: int, total_steps: int) -> float:
        """EMA decay of the momentum target at `step`; only asked when `uses_target` (config `momentum`)."""
        return self.cfg.momentum

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters that keep the base learning rate instead of following the schedule."""
        return []
