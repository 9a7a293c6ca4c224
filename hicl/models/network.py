"""The per-stage network: backbone stages -> adapter (+ augmentation embedding) -> projector.

`StageNetwork` is the online network; `SSLModel` puts a method (predictors, queues) and, for BYOL and
MoCo, a momentum target copy of the whole `StageNetwork` around it and returns one loss per stage.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hicl.augment.hierarchy import StageViews, embedded_stages
from hicl.manifest import Manifest
from hicl.methods import METHODS, Method
from hicl.models.adapters import channel_expansion
from hicl.models.backbone import StageRunner, create_backbone, select_stages
from hicl.models.heads import ParamEmbedder, make_adapter
from hicl.models.view_bn import convert_per_view, view_batches


class StageNetwork(nn.Module):
    def __init__(
        self,
        runner: StageRunner,
        adapter: str,
        projector_factory,
        embedded: list[int],
        embed_in_dim: int,
        embed_dim: int | str,
    ):
        super().__init__()
        self.runner = runner
        stages = runner.stages
        width = runner.out_features
        expansion = channel_expansion(runner.model)
        self.adapters = nn.ModuleList(
            [
                make_adapter(adapter, s.channels, width, s.reduction, stages[-1].reduction, expansion)
                for s in stages[:-1]
            ]
            + [nn.Identity()]  # the last stage is already globally pooled by the model's own head
        )
        embed_dim = resolve_embedding_dim(embed_dim, width)
        self.embedders = nn.ModuleDict({str(k): ParamEmbedder(embed_in_dim, embed_dim) for k in embedded})
        self.projectors = nn.ModuleList(
            projector_factory(width + (embed_dim if str(k) in self.embedders else 0)) for k in range(len(stages))
        )

    def forward(
        self, views: list[torch.Tensor], param_vectors: list[torch.Tensor | None], fused: bool
    ) -> list[torch.Tensor]:
        outputs = []
        for k, stage_map in enumerate(self.runner(views, fused=fused)):
            feature = self.adapters[k](stage_map)
            if str(k) in self.embedders:
                feature = torch.cat([feature, self.embedders[str(k)](param_vectors[k]).to(feature.dtype)], dim=1)
            outputs.append(self.projectors[k](feature))
        return outputs


def resolve_embedding_dim(dim: int | str, feature_width: int) -> int:
    """`hierarchy.embeddings.dim`: a width, or `auto` = a quarter of the final feature width (at least 1)."""
    return max(1, feature_width // 4) if dim == "auto" else int(dim)


class SSLModel(nn.Module):
    """Online network, method and optional target; `per_view_bn` makes every BN layer of all three
    normalise each view's batch on its own (see hicl.models.view_bn)."""

    def __init__(
        self,
        online: StageNetwork,
        method: Method,
        fused: bool,
        loss_weights: list[float],
        per_view_bn: bool = False,
    ):
        super().__init__()
        self.online = online
        self.method = method
        self.fused = fused
        self.per_view_bn = per_view_bn
        self.register_buffer("loss_weights", torch.tensor(loss_weights), persistent=False)
        # set by the collapse monitor for the steps it checks: the projections are kept (detached), so the
        # check needs no second forward
        self.keep_projections = False
        self.last_projections: list[torch.Tensor] = []
        self.target = None
        if method.uses_target:
            self.target = copy.deepcopy(online).requires_grad_(False)
        if per_view_bn:
            convert_per_view(self)

    @property
    def backbone(self) -> nn.Module:
        """The timm model being pretrained (unwrapped: its state_dict keys are timm's)."""
        return self.online.runner.model

    def forward(self, batch: StageViews) -> torch.Tensor:
        """`stage_losses`, as `forward` so that a DistributedDataParallel wrapper can call it."""
        return self.stage_losses(batch)

    def stage_losses(self, batch: StageViews) -> torch.Tensor:
        """One loss per tapped stage, shallow to deep (unweighted)."""
        if not self.per_view_bn:
            return self._stage_losses(batch)
        with view_batches(batch.views[0].shape[0] // 2):
            return self._stage_losses(batch)

    def _stage_losses(self, batch: StageViews) -> torch.Tensor:
        online = self.online(batch.views, batch.param_vectors, self.fused)
        if self.keep_projections:
            self.last_projections = [z.detach() for z in online]
        targets: list[torch.Tensor | None] = [None] * len(online)
        if self.target is not None:
            with torch.no_grad():
                targets = self.target(batch.views, batch.param_vectors, self.fused)
        losses = []
        for k, z in enumerate(online):
            z_a, z_b = z.chunk(2)
            t_a, t_b = targets[k].chunk(2) if targets[k] is not None else (None, None)
            losses.append(self.method.stage_loss(k, z_a, z_b, t_a, t_b).float())
        return torch.stack(losses)

    def total_loss(self, stage_losses: torch.Tensor) -> torch.Tensor:
        return (self.loss_weights * stage_losses).sum()

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Everything that follows an optimiser step: the momentum target's EMA update (if any).

        `step` counts the optimiser steps before this one (0 for the first); MoCo's queue needs no call
        here, it is written right after its loss has read it, as in the reference implementation.
        """
        if self.target is not None:
            self.update_target(self.method.target_momentum(step, total_steps))

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, for parameters; buffers copied."""
        if self.target is None:
            return
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            t.lerp_(o, 1.0 - momentum)
        for t, o in zip(self.target.buffers(), self.online.buffers()):
            t.copy_(o)


def build_model(manifest: Manifest, embed_in_dim: int) -> SSLModel:
    """The SSL model a manifest describes, initialised from the global torch RNG (seed it first)."""
    hierarchy = manifest.hierarchy
    backbone = create_backbone(manifest.backbone)
    names = hierarchy.stages if hierarchy.mode != "off" else None
    stages = select_stages(backbone, names, hierarchy.num_stages, manifest.backbone.name)
    runner = StageRunner(backbone, stages, manifest.backbone.name, probe_size=max(manifest.view_size, 32))
    method_cls = METHODS[manifest.method.name]
    online = StageNetwork(
        runner,
        hierarchy.adapter,
        lambda in_dim: method_cls.make_projector(manifest.method, in_dim),
        embedded_stages(hierarchy),
        embed_in_dim,
        hierarchy.embeddings.dim,
    )
    method = method_cls(manifest.method, len(stages))
    weights = hierarchy.loss_weights or [1.0] * len(stages)
    return SSLModel(online, method, hierarchy.forward == "fused", weights, per_view_bn=hierarchy.bn == "per_view")
