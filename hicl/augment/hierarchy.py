"""Hierarchy schedules: which augmentations each tapped stage's views are made with.

- `add_one`: an ordered list of op groups; stage k gets the union of the first k groups
  (paper: A_1 = {crop, color_jitter}, A_2 = A_1 + {grayscale}, A_3 = A_2 + {blur}, A_4 = A_3 + {flip}).
- `uniform`: every stage gets the full pipeline (`augment.ops`).
- `strength`: every stage gets every op of the full pipeline, weaker for shallower stages: per level
  below the last, each op's own rule (`Op.weaken`: probabilities -0.05, colour factors -0.02, crop
  min-scale +0.1, ...).
- `off`: one stage (the last) with the full pipeline: the plain base method.

With per-view recipes (`augment.views`) each stage's view 1 and view 2 follow their own view's
settings, weakened by the same rule in the `strength` mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hicl.augment.op import OPS, canonical
from hicl.augment.pipeline import Pipeline, param_vector_dim, param_vectors
from hicl.manifest import AugmentConfig, HierarchyConfig


def stage_ops(hierarchy: HierarchyConfig, augment: AugmentConfig) -> list[list[str]]:
    """The op set of every stage, shallow to deep, each in canonical application order."""
    k = hierarchy.num_stages
    if hierarchy.mode == "add_one":
        return [canonical({op for group in hierarchy.groups[: i + 1] for op in group}) for i in range(k)]
    return [canonical(augment.ops) for _ in range(k)]


def weakened(augment: AugmentConfig, levels: int) -> AugmentConfig:
    """`augment` made `levels` steps weaker: every op's section by its own `strength` rule (`Op.weaken`)."""
    if levels == 0:
        return augment
    sections = [op for op in OPS.values() if op.name in type(augment).model_fields]
    return augment.model_copy(update={op.name: op.weaken(getattr(augment, op.name), levels) for op in sections})


def stage_configs(hierarchy: HierarchyConfig, augment: AugmentConfig) -> list[AugmentConfig]:
    """The settings of every stage, shallow to deep (weakened for shallow stages in the `strength` mode)."""
    k = hierarchy.num_stages
    if hierarchy.mode == "strength":
        return [weakened(augment, k - 1 - i) for i in range(k)]
    return [augment] * k


def embedded_stages(hierarchy: HierarchyConfig) -> list[int]:
    """0-based indices of the stages whose projector also sees the augmentation embedding."""
    if not hierarchy.embeddings.ops:
        return []
    if hierarchy.embeddings.stages is not None:
        return sorted(s - 1 for s in hierarchy.embeddings.stages)
    return list(range(1, hierarchy.num_stages))


@dataclass
class StageViews:
    """Both views of every stage, concatenated as [view a; view b] along the batch."""

    views: list[torch.Tensor]
    params: list[dict[str, torch.Tensor]]
    param_vectors: list[torch.Tensor | None]


class StageAugmenter:
    """Makes each stage's pair of views with that stage's pipeline, keeping every parameter."""

    def __init__(
        self,
        hierarchy: HierarchyConfig,
        augment: AugmentConfig,
        view_size: int,
        out_dtype: torch.dtype = torch.float32,
    ):
        self.augment = augment
        self.stage_ops = stage_ops(hierarchy, augment)
        per_view = [stage_configs(hierarchy, augment.view(index)) for index in (0, 1)]
        # pipelines[k] = (view 1's, view 2's) pipeline of stage k
        self.pipelines = [
            (Pipeline(ops, cfg_a, view_size, out_dtype), Pipeline(ops, cfg_b, view_size, out_dtype))
            for ops, cfg_a, cfg_b in zip(self.stage_ops, *per_view)
        ]
        self.embed_ops = list(hierarchy.embeddings.ops)
        self.embed_encoding = hierarchy.embeddings.encoding
        self.embed_stages = set(embedded_stages(hierarchy))

    @property
    def embed_dim(self) -> int:
        return param_vector_dim(self.embed_ops)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, sizes: torch.Tensor | None = None
    ) -> StageViews:
        """Both views of every stage; `sizes` ([B, 2] true sizes of padded images) as in `Pipeline`."""
        hw = (images.shape[-2], images.shape[-1]) if sizes is None else sizes.repeat(2, 1)
        views, params, vectors = [], [], []
        for stage, (pipeline_a, pipeline_b) in enumerate(self.pipelines):
            view_a, params_a = pipeline_a(images, generator, sizes)
            view_b, params_b = pipeline_b(images, generator, sizes)
            pair = {key: torch.cat([params_a[key], params_b[key]]) for key in params_a}
            views.append(torch.cat([view_a, view_b]))
            params.append(pair)
            embedded = stage in self.embed_stages
            vectors.append(
                param_vectors(pair, self.embed_ops, self.augment, hw, self.embed_encoding) if embedded else None
            )
        return StageViews(views, params, vectors)
