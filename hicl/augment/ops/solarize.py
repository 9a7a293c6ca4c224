"""solarize: invert the values at or above a threshold with probability p (`RandomSolarize`).

Parameter `solarize` bool [B]; identity False. Encoding: 1 if solarized else 0. Strength rule: p -0.05
per level. Probe: at p = 1/2, whether the view was solarized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, coin_probe, flag_encoding, lower_p, sample_coin
from hicl.augment.op import Op, ParamSpec, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class SolarizeConfig(Section):
    p: Probability = 0.2
    threshold: Probability = 0.5


def apply_solarize(images: Tensor, solarize: Tensor, threshold: float) -> Tensor:
    """x -> where(x >= threshold, 1 - x, x) for the samples where solarize is True (torchvision's `solarize`)."""
    return apply_where(images, [(solarize, lambda x, _: torch.where(x >= threshold, 1.0 - x, x))])


sample_solarize = sample_coin

OP = register_op(Op(
    name="solarize",
    order=70,
    config=SolarizeConfig,
    default=SolarizeConfig(),
    params=(ParamSpec("solarize", "bool", False),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"solarize": sample_coin(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_solarize(x, params["solarize"], cfg.threshold),
    encode=flag_encoding("solarize"),
    dim=1,
    weaken=lower_p,
    probes=(coin_probe("solarize", "solarize"),),
))
