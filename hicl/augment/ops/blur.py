"""blur: gaussian blur with a per-sample sigma, with probability p (SimCLR's blur, torchvision's `GaussianBlur`).

Parameter `blur_sigma` float32 [B]; 0 = not applied (the identity). The kernel is `kernel_size`, default
10% of the view made odd. Encoding: 1 if blurred else 0; (sigma - mid) / half_range if blurred else 0
(mid, half_range of the configured sigma range; 0 when that range is a single value). Strength rule:
p -0.05 per level. Probe: at p = 1, sigma in 10 bins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from hicl.augment.batched import apply_where, check_range, lower_p, sample_coin, scaled, uniform
from hicl.augment.op import ApplyContext, Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import MAX_SIZE, Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class BlurConfig(Section):
    p: Probability = 0.5
    sigma: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = (0.1, 2.0)
    kernel_size: Annotated[int, Field(ge=3, le=MAX_SIZE)] | None = Field(
        None, description="odd; default: 10% of the view size, made odd (SimCLR)"
    )

    _ranges = field_validator("sigma")(classmethod(lambda cls, v: check_range(v)))

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int | None) -> int | None:
        if k is not None and k % 2 == 0:
            raise ValueError("kernel_size must be odd")
        return k


def default_blur_kernel_size(view_size: int) -> int:
    """SimCLR's kernel: 10% of the view size, made odd (+1 if even), at least 3 (32 px -> 3, 224 px -> 23)."""
    k = int(0.1 * view_size)
    return max(3, k + 1 - k % 2)


def sample_blur(batch_size: int, cfg: BlurConfig, generator: torch.Generator) -> Tensor:
    """float32 [B] gaussian sigma ~ U(sigma_min, sigma_max) with probability p, else 0 (not applied)."""
    applied = sample_coin(batch_size, cfg, generator)
    sigma = uniform((batch_size,), cfg.sigma[0], cfg.sigma[1], generator)
    return torch.where(applied, sigma, 0.0)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D gaussians [N, k]: x = linspace(-(k-1)/2, (k-1)/2, k), exp(-0.5 (x / sigma)^2) / sum.

    torchvision's `_get_gaussian_kernel1d`, one kernel per sigma.
    """
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x / sigma.unsqueeze(1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def _blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-sample sigma as one depthwise separable convolution over [1, N*C, H, W]."""
    n, c, height, width = images.shape
    kernels = gaussian_kernels(sigma.to(images.dtype), kernel_size).repeat_interleave(c, dim=0)  # per (sample, chan)
    pad = kernel_size // 2
    x = torch.nn.functional.pad(images.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    x = torch.nn.functional.conv2d(x, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return x.view(n, c, height, width)


def apply_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur the samples with sigma > 0 (torchvision's `gaussian_blur(img, [k, k], [sigma, sigma])`).

    Reflect padding of k // 2 on each side, as torchvision; needs k // 2 < H and W.
    """
    return apply_where(images, [(sigma > 0, lambda x, idx: _blur(x, sigma[idx], kernel_size))])


def _apply(images: Tensor, params: Params, cfg: BlurConfig, ctx: ApplyContext) -> Tensor:
    return apply_blur(images, params["blur_sigma"], cfg.kernel_size or default_blur_kernel_size(ctx.view_size))


def _encode(params: Params, cfg: BlurConfig, image_hw: object, encoding: str) -> Tensor:
    sigma = params["blur_sigma"]
    low, high = cfg.sigma
    applied = sigma > 0
    offset = torch.where(applied, scaled(sigma - (low + high) / 2, (high - low) / 2), 0.0)
    return torch.stack((applied.float(), offset), dim=1)


OP = register_op(Op(
    name="blur",
    order=60,
    config=BlurConfig,
    default=BlurConfig(),
    params=(ParamSpec("blur_sigma", "float32", 0.0),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"blur_sigma": sample_blur(n, cfg, generator)},
    apply=_apply,
    encode=_encode,
    dim=2,
    weaken=lower_p,
    probes=(ProbeVariant(
        "blur",
        configure=lambda cfg: cfg.model_copy(update={"p": 1.0}),
        targets=lambda params, _: {"blur": params["blur_sigma"]},
        strength=lambda cfg: cfg.sigma[1],
    ),),
))
