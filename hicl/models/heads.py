"""Small modules placed after the backbone: stage adapters, augmentation embedders and MLP heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from hicl.models.adapters import ReferenceAdapter


class SepConvAdapter(nn.Module):
    """Brings a stage-k map to the last stage's width with stride-2 separable convolutions, then pools.

    Each block is depthwise 3x3 / stride 2 -> BN -> pointwise 1x1 -> BN -> ReLU, one block per halving
    between the stage's and the last stage's reduction; widths grow geometrically from `in_channels`
    to `out_channels`. Output: [N, out_channels] after global average pooling.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int):
        super().__init__()
        widths = [
            round(in_channels * (out_channels / in_channels) ** (i / max(num_blocks, 1)))
            for i in range(num_blocks + 1)
        ]
        widths[-1] = out_channels
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [
                nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, c_out, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        if num_blocks == 0 and in_channels != out_channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


class PoolLinearAdapter(nn.Module):
    """Global average pooling -> Linear -> BN -> ReLU: a light adapter to the last stage's width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(in_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def make_adapter(
    kind: str, in_channels: int, out_channels: int, reduction: int, last_reduction: int, expansion: int = 1
) -> nn.Module:
    """The `hierarchy.adapter` for a stage with `reduction`; `expansion` is the backbone's bottleneck expansion."""
    halvings = round(math.log2(last_reduction / reduction))
    if kind == "sepconv":
        return SepConvAdapter(in_channels, out_channels, halvings)
    if kind == "reference":
        return ReferenceAdapter(in_channels, out_channels, halvings, expansion)
    return PoolLinearAdapter(in_channels, out_channels)


class ParamEmbedder(nn.Module):
    """Expanded views: embeds an augmentation's normalised parameter vector (Linear -> BN -> ReLU)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU())

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        return self.net(params)

