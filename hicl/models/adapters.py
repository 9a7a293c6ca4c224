"""The reference code's stage adapter (zhangjb416/Hierarchical-Augmentation, `resnet_imagenet.py`).

For a stage map x with C_k channels, bringing it to the final feature width D:

    s = squeeze(x)                       1x1 conv C_k -> C_k / e, BN, ReLU          (`prepare_attention`)
    g = sigmoid(BN(up(sep(s))))          one double separable block, stride 2, then bilinear
                                         upsampling back to s's size                 (`attention`)
    y = pool(ReLU(BN(W (sep_n(...sep_1(g * s))))))
                                         n double separable blocks (one per halving between the stage's
                                         and the last stage's resolution), widths doubling from C_k / e
                                         to D / e, then a 1x1 conv W to D, BN, ReLU, global average pool
                                                                                     (`scala`)

where e is the backbone's bottleneck expansion (4 for ResNet-50, 1 for ResNet-18 and for backbones
without bottleneck blocks). A double separable block is depthwise 3x3 (stride 2 in the first pair) ->
pointwise 1x1 -> BN -> ReLU -> depthwise 3x3 -> pointwise 1x1 -> BN -> ReLU; its convolutions have no bias.
On ResNet-50 the adapters of layer1..layer3 have exactly the reference's 1,347,712 / 1,409,280 /
1,655,296 parameters. When the widths do not double exactly (other backbones) they grow geometrically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn


def channel_expansion(model: nn.Module) -> int:
    """The bottleneck expansion of a timm ResNet (4 for ResNet-50, 1 for ResNet-18); 1 for other models."""
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            return module.expansion
    return 1


class DoubleSepConv(nn.Sequential):
    """The reference's `SepConv`: two depthwise + pointwise pairs, the first depthwise with `stride`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class AttentionGate(nn.Module):
    """sigmoid(BN(upsample(DoubleSepConv(x)))) * x: a spatial-and-channel gate on the squeezed map."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = DoubleSepConv(channels, channels)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference upsamples by 2; resizing to x's size is the same on even sizes and also fits odd ones.
        up = F.interpolate(self.branch(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.norm(up)) * x


class ReferenceAdapter(nn.Module):
    """Squeeze -> attention gate -> `num_blocks` DoubleSepConv -> 1x1 conv to `out_channels` -> pool.

    Output: [N, out_channels].
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, expansion: int = 1):
        super().__init__()
        squeezed = max(1, in_channels // expansion)
        top = max(1, out_channels // expansion)
        widths = [
            round(squeezed * (top / squeezed) ** (i / max(num_blocks, 1))) for i in range(num_blocks + 1)
        ]
        widths[-1] = top if num_blocks else squeezed
        self.squeeze = nn.Sequential(
            nn.Conv2d(in_channels, squeezed, 1, bias=False), nn.BatchNorm2d(squeezed), nn.ReLU()
        )
        self.gate = AttentionGate(squeezed)
        self.blocks = nn.Sequential(*(DoubleSepConv(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Sequential(
            nn.Conv2d(widths[-1], out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.gate(self.squeeze(x)))).mean(dim=(2, 3))
