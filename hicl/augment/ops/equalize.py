"""equalize: histogram equalisation per channel with probability p (`RandomEqualize`).

Parameter `equalize` bool [B]; identity False. The selected samples go through torchvision's own
batched `equalize` kernel (uint8 histogram, Pillow's lookup table), which works on whole batches.
Encoding: 1 if equalized else 0. Strength rule: p -0.05 per level. Probe: at p = 1/2, whether the view
was equalized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, coin_probe, flag_encoding, lower_p, sample_coin
from hicl.augment.op import Op, ParamSpec, register_op
from hicl.config import Probability, Section

if TYPE_CHECKING:
    from torch import Tensor


class EqualizeConfig(Section):
    p: Probability = 0.5


def apply_equalize(images: Tensor, equalize: Tensor) -> Tensor:
    """Equalise the samples where equalize is True (`torchvision.transforms.v2.functional.equalize`)."""
    from torchvision.transforms.v2.functional import equalize as kernel  # at call time: torchvision is slow to import

    return apply_where(images, [(equalize, lambda x, _: kernel(x))])


OP = register_op(Op(
    name="equalize",
    order=74,
    config=EqualizeConfig,
    default=EqualizeConfig(),
    params=(ParamSpec("equalize", "bool", False),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"equalize": sample_coin(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_equalize(x, params["equalize"]),
    encode=flag_encoding("equalize"),
    dim=1,
    weaken=lower_p,
    probes=(coin_probe("equalize", "equalize"),),
))
