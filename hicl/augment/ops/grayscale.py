"""grayscale: replace the image by 3 copies of its luma with probability p (`RandomGrayscale`).

Parameter `grayscale` bool [B]; identity False. Encoding: 1 if grey else 0. Strength rule: p -0.05 per
level. Probe: at p = 1/2, whether the view is grey.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, coin_probe, flag_encoding, lower_p, luma, sample_coin
from hicl.augment.op import Op, ParamSpec, register_op
from hicl.config import Probability, Section

if TYPE_CHECKING:
    from torch import Tensor


class GrayscaleConfig(Section):
    p: Probability = 0.2


def apply_grayscale(images: Tensor, gray: Tensor) -> Tensor:
    """Replace the samples where gray is True by 3 copies of their luma (`rgb_to_grayscale(img, 3)`)."""
    return apply_where(images, [(gray, lambda x, _: luma(x).expand_as(x))])


sample_grayscale = sample_coin

OP = register_op(Op(
    name="grayscale",
    order=50,
    config=GrayscaleConfig,
    default=GrayscaleConfig(),
    params=(ParamSpec("grayscale", "bool", False),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"grayscale": sample_coin(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_grayscale(x, params["grayscale"]),
    encode=flag_encoding("grayscale"),
    dim=1,
    weaken=lower_p,
    probes=(coin_probe("grayscale", "grayscale"),),
))
