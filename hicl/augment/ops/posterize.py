"""posterize: keep `bits` bits per channel with probability p (`RandomPosterize`).

Parameter `posterize` bool [B]; identity False. On [0, 1] images, x -> clamp(floor(x * 2^bits), 0,
2^bits - 1) / 2^bits (torchvision's float `posterize`). Encoding: 1 if posterized else 0. Strength rule:
p -0.05 per level. Probe: at p = 1/2, whether the view was posterized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from hicl.augment.batched import apply_where, coin_probe, flag_encoding, lower_p, sample_coin
from hicl.augment.op import Op, ParamSpec, register_op
from hicl.config import Probability, Section

if TYPE_CHECKING:
    from torch import Tensor


class PosterizeConfig(Section):
    p: Probability = 0.5
    bits: Annotated[int, Field(ge=0, le=8)] = 4


def apply_posterize(images: Tensor, posterize: Tensor, bits: int) -> Tensor:
    """Quantise the samples where posterize is True to 2^bits levels per channel."""
    levels = 1 << bits
    return apply_where(images, [(posterize, lambda x, _: x.mul(levels).floor_().clamp_(0, levels - 1).mul_(1.0 / levels))])


OP = register_op(Op(
    name="posterize",
    order=72,
    config=PosterizeConfig,
    default=PosterizeConfig(),
    params=(ParamSpec("posterize", "bool", False),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"posterize": sample_coin(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_posterize(x, params["posterize"], cfg.bits),
    encode=flag_encoding("posterize"),
    dim=1,
    weaken=lower_p,
    probes=(coin_probe("posterize", "posterize"),),
))
