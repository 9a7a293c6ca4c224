"""flip: horizontal flip with probability p (`RandomHorizontalFlip`).

Parameter `flip` bool [B]; identity False. Encoding: 1 if flipped else 0. Strength rule: p -0.05 per
level. Probe: at p = 1/2, whether the view was flipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, coin_probe, flag_encoding, lower_p, sample_coin
from hicl.augment.op import Op, ParamSpec, register_op
from hicl.config import Probability, Section

if TYPE_CHECKING:
    from torch import Tensor


class FlipConfig(Section):
    p: Probability = 0.5


def apply_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the width axis of the samples where flip is True (torchvision's `horizontal_flip`)."""
    return apply_where(images, [(flip, lambda x, _: x.flip(-1))])


sample_flip = sample_coin

OP = register_op(Op(
    name="flip",
    order=20,
    config=FlipConfig,
    default=FlipConfig(),
    params=(ParamSpec("flip", "bool", False),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"flip": sample_coin(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_flip(x, params["flip"]),
    encode=flag_encoding("flip"),
    dim=1,
    weaken=lower_p,
    probes=(coin_probe("flip", "flip"),),
))
