"""erasing: random erasing / cutout of one rectangle per view with probability p (`RandomErasing`).

Parameter `erase_box` float32 [B, 4] = (top, left, height, width) as fractions of the view side S
(whole pixels / S); identity (0, 0, 0, 0), nothing erased. The rectangle is filled with `value` on the [0, 1] view, before normalisation
(torchvision's pipelines usually erase after `Normalize`, where 0 is the mean colour; here value 0 is
black). Drawn as `RandomErasing.get_params`: per attempt, area = S^2 U(scale), r = exp(U(log ratio)),
h = round(sqrt(area r)), w = round(sqrt(area / r)), valid when h < S and w < S; the first of 10 valid
attempts is kept, top ~ U{0..S-h}, left ~ U{0..S-w}; no valid attempt: nothing erased. Encoding: the
box itself (top / S, left / S, height / S, width / S). Strength rule: p -0.05 per level. Probe: at p = 1, the
erased area fraction in 10 bins.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from hicl.augment.batched import check_range, lower_p, sample_coin, uniform
from hicl.augment.op import ApplyContext, Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

ATTEMPTS = 10  # as torchvision's RandomErasing

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class ErasingConfig(Section):
    p: Probability = 0.5
    scale: tuple[Fraction, Fraction] = Field((0.02, 0.33), description="erased area as a fraction of the view")
    ratio: tuple[Positive, Positive] = Field((0.3, 3.3), description="aspect ratio (height / width) range")
    value: Probability = Field(0.0, description="fill value on the [0, 1] view (before normalisation)")

    _ranges = field_validator("scale", "ratio")(classmethod(lambda cls, v: check_range(v)))


def sample_erasing(batch_size: int, size: int, cfg: ErasingConfig, generator: torch.Generator) -> Tensor:
    """float32 [B, 4] boxes (top, left, height, width) / size in a size x size view; zeros where nothing is erased."""
    device = generator.device
    applied = sample_coin(batch_size, cfg, generator)
    shape = (batch_size, ATTEMPTS)
    area = size * size * uniform(shape, cfg.scale[0], cfg.scale[1], generator, torch.float64)
    aspect = uniform(shape, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, torch.float64).exp()
    h = (area * aspect).sqrt().round()
    w = (area / aspect).sqrt().round()
    valid = (h < size) & (w < size)
    first = torch.where(valid, torch.arange(ATTEMPTS, device=device), ATTEMPTS).amin(dim=1, keepdim=True)
    first = first.clamp_(max=ATTEMPTS - 1)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    offset = torch.rand((2, batch_size), generator=generator, device=device, dtype=torch.float64)
    top, left = (offset[0] * (size - h + 1)).floor(), (offset[1] * (size - w + 1)).floor()
    boxes = torch.stack((top, left, h, w), dim=1) / size
    erased = applied & valid.any(dim=1)
    return torch.where(erased.unsqueeze(1), boxes, 0.0).float()


def apply_erasing(images: Tensor, boxes: Tensor, value: float) -> Tensor:
    """Fill each sample's box (fractions of the square view) with `value` (torchvision's `erase`): one mask,
    no loop over samples."""
    height, width = images.shape[-2:]
    pixels = (boxes.double() * height).round().long()  # k / S * S is k again
    top, left, h, w = (column.view(-1, 1) for column in pixels.unbind(dim=1))
    rows = torch.arange(height, device=images.device).view(1, -1)
    cols = torch.arange(width, device=images.device).view(1, -1)
    inside_rows = (rows >= top) & (rows < top + h)  # [B, H]
    inside_cols = (cols >= left) & (cols < left + w)  # [B, W]
    mask = (inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)).unsqueeze(1)  # [B, 1, H, W]
    return images.masked_fill(mask, value)


def _area(params: Params, image_hw: tuple[int, int]) -> dict[str, Tensor]:
    box = params["erase_box"]
    return {"erasing": box[:, 2] * box[:, 3]}


def _sample(n: int, image_hw: object, cfg: ErasingConfig, generator: torch.Generator, ctx: ApplyContext) -> Params:
    return {"erase_box": sample_erasing(n, ctx.view_size, cfg, generator)}


OP = register_op(Op(
    name="erasing",
    order=90,  # last: a rectangle of the finished view
    config=ErasingConfig,
    default=ErasingConfig(),
    params=(ParamSpec("erase_box", "float32", (0.0, 0.0, 0.0, 0.0), (4,)),),
    sample=_sample,
    apply=lambda x, params, cfg, ctx: apply_erasing(x, params["erase_box"], cfg.value),
    encode=lambda params, cfg, image_hw, encoding: params["erase_box"],
    dim=4,
    weaken=lower_p,
    probes=(ProbeVariant(
        "erasing",
        configure=lambda cfg: cfg.model_copy(update={"p": 1.0}),
        targets=_area,
        strength=lambda cfg: cfg.scale[1],
        changed=lambda params: params["erase_box"][:, 2] > 0,
    ),),
))
