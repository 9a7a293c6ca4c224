"""timm backbones cut into stages, and a runner that sends stage-k views only through stages 1..k.

A timm model is tapped at the modules its `feature_info` names (ResNet layer1..layer4, RegNet s1..s4,
ConvNeXt stages.0..3, EfficientNet's stage ends; a ViT as K equal groups of blocks). hicl flattens the
model's children down to those names and splits the sequence after each tapped stage; the last segment
runs to the end of the model, including its global pooling head (with `num_classes=0`), so the last
stage's output is exactly the pooled feature `model(x)` that linear evaluation and every export use. Whether a model really is such
a sequence is checked once, on a small input in eval mode, against `model(x)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from hicl.errors import HiclError
from hicl.manifest import BackboneConfig


@dataclass(frozen=True)
class StageInfo:
    """One tapped stage: its timm module name, output channels and stride relative to the input."""

    name: str
    channels: int
    reduction: int


def create_backbone(cfg: BackboneConfig) -> nn.Module:
    """The timm model with no classifier (`num_classes=0`), optionally with a small-input stem."""
    # drop_path_rate only when asked for: models without stochastic depth (inception_v3) refuse the argument.
    extra = {"drop_path_rate": cfg.drop_path_rate} if cfg.drop_path_rate else {}
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=0, **extra, **cfg.kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        field = "backbone.kwargs" if cfg.kwargs else "backbone.drop_path_rate"
        given = {**extra, **cfg.kwargs}
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unexpected:
            raise HiclError(f"{field}: {cfg.name} does not take {unexpected.group(1)!r}") from None
        # the model takes the arguments, but one of their values is wrong
        raise HiclError(f"{field}: timm cannot build {cfg.name} with {given} ({str(exc)[:200] or type(exc).__name__})") from None
    if cfg.small_stem:
        apply_small_stem(model, cfg.name)
    return model


def apply_small_stem(model: nn.Module, name: str) -> None:
    """Replace a ResNet-style stem (7x7/2 conv + max-pool) by a 3x3/1 conv without pooling (32 px images)."""
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv1, nn.Conv2d) or maxpool is None:
        raise HiclError(f"backbone.small_stem: {name} has no ResNet-style stem (conv1 + maxpool)")
    model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    # feature_info reductions change with the stem; keep them truthful for the adapters.
    for info in model.feature_info:
        info["reduction"] = max(1, info["reduction"] // 4)


def feature_stages(model: nn.Module) -> list[StageInfo]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise HiclError(f"backbone: {type(model).__name__} has no feature_info, so its stages cannot be tapped")
    return [StageInfo(f["module"], f["num_chs"], f["reduction"]) for f in info]


def select_stages(model: nn.Module, names: list[str] | None, count: int, model_name: str) -> list[StageInfo]:
    """The tapped stages: the named ones; by default the last `count` feature stages, or for models
    that never downsample (ViT: one feature stage per block) the ends of `count` equal block groups."""
    available = feature_stages(model)
    if names is None:
        if count > len(available):
            raise HiclError(
                f"hierarchy: {model_name} has {len(available)} feature stages "
                f"({', '.join(s.name for s in available)}), the hierarchy needs {count}"
            )
        if len({s.reduction for s in available}) == 1:
            return [available[(i + 1) * len(available) // count - 1] for i in range(count)]
        return available[len(available) - count :]
    by_name = {s.name: s for s in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise HiclError(
            f"hierarchy.stages: {model_name} has no stage {unknown[0]!r}; "
            f"expected some of {', '.join(by_name)}"
        )
    order = [s.name for s in available]
    if [order.index(n) for n in names] != sorted(order.index(n) for n in names):
        raise HiclError("hierarchy.stages: stages must be listed from shallow to deep")
    return [by_name[n] for n in names]


Step = Callable[[torch.Tensor], torch.Tensor]


def _flatten_to(module: nn.Module, targets: set[str], prefix: str = "") -> list[tuple[str, Step]]:
    """Children in order, descending only into those that contain a target module."""
    flat: list[tuple[str, Step]] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if full not in targets and any(t.startswith(full + ".") for t in targets):
            flat.extend(_flatten_to(child, targets, full + "."))
        else:
            flat.append((full, child))
    return flat


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "pool", "num_prefix_tokens"))


def _vit_sequence(model: nn.Module) -> list[tuple[str, Step]]:
    """timm's VisionTransformer forward as a flat sequence (two of its steps are methods, not children)."""
    steps: list[tuple[str, Step]] = [
        ("patch_embed", model.patch_embed), ("_pos_embed", model._pos_embed),
        ("patch_drop", model.patch_drop), ("norm_pre", model.norm_pre),
    ]
    steps += [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
    steps += [("norm", model.norm), ("pool", model.pool), ("fc_norm", model.fc_norm),
              ("head_drop", model.head_drop), ("head", model.head)]
    return steps


def _tokens_to_map(model: nn.Module) -> Step:
    """ViT tokens [N, prefix + h*w, C] -> patch map [N, C, h, w] for the stage adapters."""

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, model.num_prefix_tokens :]
        side = int(round(patches.shape[1] ** 0.5))
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)

    return to_map


class StageRunner(nn.Module):
    """Runs a timm model as consecutive segments ending at the tapped stages.

    `forward(stage_inputs)` takes one batch per stage and returns, for the batch of stage k, the
    output of stage k (a feature map; for the last stage the pooled feature). `fused=True` sends
    the batches that continue past a stage through it together, so the shared early stages run once
    over all of them; BatchNorm layers then normalise with statistics of all stages' views together,
    which changes training-mode outputs (eval-mode outputs are identical to `fused=False`).
    """

    def __init__(self, model: nn.Module, stages: list[StageInfo], model_name: str, probe_size: int = 64):
        super().__init__()
        self.model = model
        self.stages = stages
        targets = {s.name for s in stages[:-1]}
        vit = _is_vit(model)
        flat = _vit_sequence(model) if vit else _flatten_to(model, targets)
        # Outputs of the stages before the last go to the adapters as [N, C, H, W] maps.
        self._to_map: Step = _tokens_to_map(model) if vit else (lambda x: x)
        names = [n for n, _ in flat]
        cuts = [names.index(s.name) + 1 for s in stages[:-1]]
        bounds = [0, *cuts, len(flat)]
        # Plain lists: the modules are registered once, under `model`, so state_dict keys stay timm's.
        self._segments = [[m for _, m in flat[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        self._check_sequential(model_name, probe_size)

    @torch.no_grad()
    def _check_sequential(self, model_name: str, probe_size: int) -> None:
        """Fail unless running the segments equals `model(x)`; records the pooled feature width."""
        was_training = self.model.training
        self.model.eval()
        probe = torch.randn(2, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0))
        try:
            try:
                reference = self.model(probe)
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise HiclError(
                    f"backbone.name: {model_name} cannot run the {probe_size} px input hicl checks it with "
                    f"(the view size, at least 32 px; see data.image_size, augment.output_size and "
                    f"backbone.kwargs such as img_size): {str(exc).splitlines()[0][:200]}"
                ) from None
            try:
                mine = self.run_all(probe)
                same = reference.ndim == 2 and mine.shape == reference.shape
                same = same and torch.allclose(mine, reference, atol=1e-4, rtol=1e-4)
            except (RuntimeError, AssertionError, ValueError):
                same = False
        finally:
            self.model.train(was_training)
        if not same:
            raise HiclError(
                f"backbone.name: {model_name}'s forward is not the sequence of its child modules, "
                "so hicl cannot tap its stages"
            )
        self.out_features = reference.shape[1]

    def run_segment(self, index: int, x: torch.Tensor) -> torch.Tensor:
        for module in self._segments[index]:
            x = module(x)
        return x

    def run_all(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(len(self._segments)):
            x = self.run_segment(index, x)
        return x

    def forward(self, stage_inputs: list[torch.Tensor], fused: bool = False) -> list[torch.Tensor]:
        if len(stage_inputs) != len(self._segments):
            raise ValueError(f"expected {len(self._segments)} stage batches, got {len(stage_inputs)}")
        if not fused:
            outputs = []
            for k, x in enumerate(stage_inputs):
                for index in range(k + 1):
                    x = self.run_segment(index, x)
                outputs.append(x)
            return [self._to_map(x) for x in outputs[:-1]] + outputs[-1:]
        sizes = [x.shape[0] for x in stage_inputs]
        x = torch.cat(stage_inputs)
        outputs = []
        for k in range(len(stage_inputs)):
            x = self.run_segment(k, x)
            done, x = x.split([sizes[k], x.shape[0] - sizes[k]])
            outputs.append(done)
        return [self._to_map(x) for x in outputs[:-1]] + outputs[-1:]
