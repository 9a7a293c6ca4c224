"""color_jitter: brightness, contrast, saturation and hue in a random order, with probability p (`ColorJitter`).

Parameters: `color_factors` float32 [B, 4] (brightness, contrast, saturation, hue; identity (1, 1, 1, 0)),
`color_order` int64 [B, 4] (order[i, j] = the factor applied at position j: 0=b, 1=c, 2=s, 3=h; identity
(0, 1, 2, 3)) and `color_applied` bool [B]. Encoding `reference` (the reference code's): the raw
factors; `normalized`: (b - 1) / brightness, (c - 1) / contrast, (s - 1) / saturation, h / hue (0 where the
range is 0). Strength rule: each factor range -0.02 per level. Probe: all four factors (four heads), and
each factor alone (`brightness`, `contrast`, `saturation`, `hue`) with the others' ranges set to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

from pydantic import Field

from hicl.augment.batched import apply_where, luma, per_sample, sample_coin, scaled, uniform
from hicl.augment.op import Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

COLOR_FACTORS = ("brightness", "contrast", "saturation", "hue")
COLOR_IDENTITY: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue
COLOR_STEP = 0.02  # the `strength` hierarchy: factor ranges -0.02 per level below the last stage

NonNegative = Annotated[float, Field(ge=0.0)]


class ColorJitterConfig(Section):
    p: Probability = 0.8
    brightness: NonNegative = 0.4
    contrast: NonNegative = 0.4
    saturation: NonNegative = 0.4
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    order: Literal["random", "fixed"] = Field(
        "random", description="random: a per-sample permutation of the four ops; fixed: b, c, s, h"
    )


class ColorJitterParams(NamedTuple):
    factors: Tensor  # float32 [B, 4]: brightness, contrast, saturation, hue
    order: Tensor  # int64 [B, 4]: order[i, j] = the op applied at position j to sample i
    applied: Tensor  # bool [B]


def sample_color_jitter(batch_size: int, cfg: ColorJitterConfig, generator: torch.Generator) -> ColorJitterParams:
    """Per-sample colour jitter: with probability p, factors b, c, s ~ U(max(0, 1-x), 1+x), h ~ U(-hue, hue).

    order[i] is a uniform random permutation of (0=b, 1=c, 2=s, 3=h) (argsort of 4 uniforms) when
    cfg.order == "random", (0, 1, 2, 3) when "fixed". Samples not applied get the identity factors
    (1, 1, 1, 0) and order (0, 1, 2, 3).
    """
    device = generator.device
    applied = sample_coin(batch_size, cfg, generator)
    spans = (cfg.brightness, cfg.contrast, cfg.saturation)
    low = torch.tensor([max(0.0, 1 - x) for x in spans] + [-cfg.hue], device=device)
    high = torch.tensor([1 + x for x in spans] + [cfg.hue], device=device)
    factors = uniform((batch_size, 4), low, high, generator)
    identity_order = torch.arange(4, device=device).expand(batch_size, 4)
    if cfg.order == "random":
        order = torch.rand((batch_size, 4), generator=generator, device=device).argsort(dim=1)
    else:
        order = identity_order
    column = applied.unsqueeze(1)
    return ColorJitterParams(
        factors=torch.where(column, factors, torch.tensor(COLOR_IDENTITY, device=device)),
        order=torch.where(column, order, identity_order),
        applied=applied,
    )


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """clamp(f * images + (1 - f) * other, 0, 1) with a per-sample f (torchvision's `_blend`)."""
    f = per_sample(factor)
    return (images * f).add_(other * (1 - f)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """clamp(f * x, 0, 1) with a per-sample f [N]."""
    return (images * per_sample(factor)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-sample mean luma over H, W: clamp(f * x + (1 - f) * mean, 0, 1)."""
    return _blend(images, luma(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the luma image: clamp(f * x + (1 - f) * gray, 0, 1)."""
    return _blend(images, luma(images), factor)


def rgb_to_hsv(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB [N, 3, H, W] in [0, 1] -> (h, s, v), each [N, H, W], h in [0, 1) (torchvision's `_rgb_to_hsv`).

    Pillow's formulas: v = max, s = (max - min) / max, h = sector-wise (rc, gc, bc = (max - channel) /
    (max - min)) / 6 mod 1; grey pixels (max == min) get s = h = 0 without dividing by zero.
    """
    r, g, b = images.unbind(dim=1)
    # elementwise max / min: the same values as torchvision's aminmax over channels, several times faster
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - images) / divisor).unbind(dim=1)
    max_is_not_r = maxc != r
    max_is_g = maxc == g
    hr = (bc - gc) * ~max_is_not_r
    hg = (rc + 2.0 - bc) * (max_is_g & max_is_not_r)
    hb = (gc + 4.0 - rc) * (max_is_not_r & ~max_is_g)
    h = (hr + hg + hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return h, s, maxc


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(h, s, v), each [N, H, W] -> RGB [N, 3, H, W] (torchvision's `_hsv_to_rgb`).

    With i = floor(6 h), f = 6 h - i: p = v (1 - s), q = v (1 - s f), t = v (1 - s (1 - f)), each clamped to
    [0, 1]; by sector i mod 6 = 0..5, r takes (v, q, p, p, t, v), g (t, v, v, q, p, p), b (p, p, t, v, v, q).
    """
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = (sxf + one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = (one_minus_s * v).clamp_(0.0, 1.0)
    # selecting with masks picks the same values as torchvision's table gather, without an int64 index
    sector = [i == k for k in range(6)]
    sector[0] |= i == 6  # 6 h rounds up to 6 for h just below 1: sector 6 mod 6 = 0
    r = torch.where(sector[0] | sector[5], v, torch.where(sector[1], q, torch.where(sector[4], t, p)))
    g = torch.where(sector[1] | sector[2], v, torch.where(sector[3], q, torch.where(sector[0], t, p)))
    b = torch.where(sector[3] | sector[4], v, torch.where(sector[5], q, torch.where(sector[2], t, p)))
    return torch.stack((r, g, b), dim=1)


def adjust_hue(images: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by a per-sample f in [-0.5, 0.5]: RGB -> HSV, h = (h + f) mod 1, HSV -> RGB."""
    h, s, v = rgb_to_hsv(images)
    return hsv_to_rgb((h + factor.view(-1, 1, 1)).remainder_(1.0), s, v)


COLOR_ADJUSTERS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue,
)


def apply_color_jitter(images: Tensor, factors: Tensor, order: Tensor, applied: Tensor) -> Tensor:
    """Apply brightness, contrast, saturation and hue to the applied samples, each in its own order.

    For position j = 0..3, op `order[i, j]` is applied to sample i with factor `factors[i, op]`; at each
    position the samples sharing an op are transformed together. An op whose factor is its identity
    (1, 1, 1, 0) is skipped, as torchvision's ColorJitter skips ops whose range is 0 (of the four, only
    hue 0 would change values, by float rounding in the HSV round trip).
    """
    identity = torch.tensor(COLOR_IDENTITY, device=factors.device)
    active = factors != identity

    def jitter(x: Tensor, idx: Tensor) -> Tensor:
        # x is a gathered copy of the applied samples, so it is updated in place
        f, o, act = factors[idx], order[idx], active[idx]
        for position in range(4):
            for op, adjust in enumerate(COLOR_ADJUSTERS):
                sel = (act[:, op] & (o[:, position] == op)).nonzero().squeeze(1)
                if sel.numel():
                    x[sel] = adjust(x[sel], f[sel, op])
        return x

    return apply_where(images, [(applied, jitter)])


def _sample(n: int, image_hw: object, cfg: ColorJitterConfig, generator: torch.Generator, ctx: object) -> Params:
    factors, order, applied = sample_color_jitter(n, cfg, generator)
    return {"color_factors": factors, "color_order": order, "color_applied": applied}


def _encode(params: Params, cfg: ColorJitterConfig, image_hw: object, encoding: str) -> Tensor:
    factors = params["color_factors"]
    if encoding == "reference":
        # sampling leaves the identity (1, 1, 1, 0) where jitter was not applied, as the reference records it
        return factors
    shifted = factors - torch.tensor(COLOR_IDENTITY, device=factors.device)
    spans = [getattr(cfg, name) for name in COLOR_FACTORS]
    return torch.stack([scaled(shifted[:, i], span) for i, span in enumerate(spans)], dim=1)


def _weaken(cfg: ColorJitterConfig, levels: int) -> ColorJitterConfig:
    return cfg.model_copy(update={name: max(0.0, getattr(cfg, name) - COLOR_STEP * levels) for name in COLOR_FACTORS})


def _probe(only: str | None) -> ProbeVariant:
    """All four factors (only=None) or one, the others' ranges set to 0, always applied."""
    factors = COLOR_FACTORS if only is None else (only,)

    def configure(cfg: ColorJitterConfig) -> ColorJitterConfig:
        ranges = {f: getattr(cfg, f) if f in factors else 0.0 for f in COLOR_FACTORS}
        return cfg.model_copy(update={"p": 1.0, **ranges})

    def targets(params: Params, _: tuple[int, int]) -> dict[str, Tensor]:
        return {f: params["color_factors"][:, COLOR_FACTORS.index(f)].float() for f in factors}

    return ProbeVariant(
        only or "color_jitter", configure, targets, strength=lambda cfg: sum(getattr(cfg, f) for f in factors)
    )


OP = register_op(Op(
    name="color_jitter",
    order=40,
    config=ColorJitterConfig,
    default=ColorJitterConfig(),
    params=(
        ParamSpec("color_factors", "float32", COLOR_IDENTITY, (4,)),
        ParamSpec("color_order", "int64", (0, 1, 2, 3), (4,)),
        ParamSpec("color_applied", "bool", False),
    ),
    sample=_sample,
    apply=lambda x, params, cfg, ctx: apply_color_jitter(
        x, params["color_factors"], params["color_order"], params["color_applied"]
    ),
    encode=_encode,
    dim=4,
    weaken=_weaken,
    probes=(_probe(None), *(_probe(f) for f in COLOR_FACTORS)),
))
