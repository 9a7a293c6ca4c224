"""sharpness: per-sample sharpness factor with probability p (torchvision's `adjust_sharpness`).

Parameter `sharpness_factor` float32 [B]; identity 1 (not applied). With D the image smoothed by the
3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (interior pixels; the 1-pixel border keeps x):
x -> clamp(D + f (x - D), 0, 1), f ~ U(factor). Encoding: 1 if applied else 0; (f - mid) / half_range if
applied else 0. Strength rule: p -0.05 per level. Probe: at p = 1, the factor in 10 bins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from hicl.augment.batched import apply_where, check_range, lower_p, per_sample, sample_coin, scaled, uniform
from hicl.augment.op import Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

NonNegative = Annotated[float, Field(ge=0.0)]


class SharpnessConfig(Section):
    p: Probability = 0.5
    factor: tuple[NonNegative, NonNegative] = Field(
        (0.1, 1.9), description="sharpness factor range: 0 = smoothed, 1 = unchanged, 2 = twice as sharp"
    )

    _ranges = field_validator("factor")(classmethod(lambda cls, v: check_range(v)))


def sample_sharpness(batch_size: int, cfg: SharpnessConfig, generator: torch.Generator) -> Tensor:
    """float32 [B]: f ~ U(factor) with probability p, else 1 (the identity)."""
    applied = sample_coin(batch_size, cfg, generator)
    factor = uniform((batch_size,), cfg.factor[0], cfg.factor[1], generator)
    return torch.where(applied, factor, 1.0)


def _sharpen(images: Tensor, factor: Tensor) -> Tensor:
    n, c, height, width = images.shape
    if height <= 2 or width <= 2:
        return images
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=images.dtype, device=images.device)
    degenerate = torch.nn.functional.conv2d(images, kernel.expand(c, 1, 3, 3), groups=c)
    out = images.clone()
    interior = out[..., 1:-1, 1:-1]
    interior.copy_(degenerate + per_sample(factor) * (interior - degenerate))
    return out.clamp_(0, 1)


def apply_sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Sharpen (f > 1) or smooth (f < 1) the samples whose factor is not 1."""
    return apply_where(images, [(factor != 1.0, lambda x, idx: _sharpen(x, factor[idx]))])


def _encode(params: Params, cfg: SharpnessConfig, image_hw: object, encoding: str) -> Tensor:
    factor = params["sharpness_factor"]
    low, high = cfg.factor
    applied = factor != 1.0
    offset = torch.where(applied, scaled(factor - (low + high) / 2, (high - low) / 2), 0.0)
    return torch.stack((applied.float(), offset), dim=1)


OP = register_op(Op(
    name="sharpness",
    order=65,
    config=SharpnessConfig,
    default=SharpnessConfig(),
    params=(ParamSpec("sharpness_factor", "float32", 1.0),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"sharpness_factor": sample_sharpness(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_sharpness(x, params["sharpness_factor"]),
    encode=_encode,
    dim=2,
    weaken=lower_p,
    probes=(ProbeVariant(
        "sharpness",
        configure=lambda cfg: cfg.model_copy(update={"p": 1.0}),
        targets=lambda params, _: {"sharpness": params["sharpness_factor"]},
        strength=lambda cfg: max(abs(cfg.factor[0] - 1.0), abs(cfg.factor[1] - 1.0)),
    ),),
))
