"""The ResNet family that torchvision and detectron2 build themselves, in timm's (= torchvision's) naming.

timm's plain ResNets (`resnet50`, not `resnet50d`) use torchvision's module names and shapes, so their
state_dict (without `fc`) is torchvision's. Each entry gives detectron2's `MODEL.RESNETS` values:
bottleneck width = NUM_GROUPS * WIDTH_PER_GROUP; RES2_OUT_CHANNELS is 64 for basic blocks, else 256.
"""

from __future__ import annotations

from dataclasses import dataclass

from hicl.errors import HiclError
from hicl.export.base import ExportSource


@dataclass(frozen=True)
class ResNetSpec:
    depth: int
    num_groups: int = 1
    width_per_group: int = 64

    @property
    def res2_out_channels(self) -> int:
        return 64 if self.depth in (18, 34) else 256


RESNETS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec(18),
    "resnet34": ResNetSpec(34),
    "resnet50": ResNetSpec(50),
    "resnet101": ResNetSpec(101),
    "resnet152": ResNetSpec(152),
    "wide_resnet50_2": ResNetSpec(50, width_per_group=128),
    "wide_resnet101_2": ResNetSpec(101, width_per_group=128),
    "resnext50_32x4d": ResNetSpec(50, num_groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec(101, num_groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetSpec(101, num_groups=64, width_per_group=4),
}


def resnet_spec(source: ExportSource, consumer: str) -> ResNetSpec:
    """The spec of the run's backbone, or a clear error when `consumer` cannot build it."""
    name = source.architecture
    if name not in RESNETS:
        raise HiclError(
            f"backbone.name: {consumer} export supports the ResNet family only "
            f"({', '.join(RESNETS)}), not {source.manifest.backbone.name}; use --format timm, onnx or hicl"
        )
    if source.manifest.backbone.kwargs:
        raise HiclError(
            f"backbone.kwargs: {consumer} builds the standard {name}; a backbone built with "
            f"{source.manifest.backbone.kwargs} would not match it"
        )
    source.refuse_small_stem(consumer)
    return RESNETS[name]
