"""gaussian_noise: additive gaussian noise with a per-sample sigma, with probability p (`GaussianNoise`).

Parameters: `noise_sigma` float32 [B] (0 = not applied, the identity) and `noise_seed` int64 [B], one
seed for the batch: the noise of the whole batch is `randn([B, 3, S, S])` of a generator seeded with it
on the images' device, so a view is fixed by its parameters without storing the noise. x -> clamp(x +
sigma * noise, 0, 1) (torchvision's float `gaussian_noise` with mean 0, clip=True). Encoding: 1 if
applied else 0; (sigma - mid) / half_range if applied else 0. Strength rule: p -0.05 per level. Probe: at
p = 1/2, whether noise was added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from hicl.augment.batched import check_range, lower_p, per_sample, sample_coin, scaled, uniform
from hicl.augment.op import Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

SEED_RANGE = 2**62

NonNegative = Annotated[float, Field(ge=0.0)]


class GaussianNoiseConfig(Section):
    p: Probability = 0.5
    sigma: tuple[NonNegative, NonNegative] = Field((0.1, 0.1), description="noise standard deviation range (on [0, 1])")

    _ranges = field_validator("sigma")(classmethod(lambda cls, v: check_range(v)))


def sample_gaussian_noise(batch_size: int, cfg: GaussianNoiseConfig, generator: torch.Generator) -> Params:
    """sigma ~ U(sigma) with probability p, else 0; one noise seed for the batch."""
    applied = sample_coin(batch_size, cfg, generator)
    sigma = uniform((batch_size,), cfg.sigma[0], cfg.sigma[1], generator)
    seed = torch.randint(0, SEED_RANGE, (1,), generator=generator, device=generator.device)
    return {"noise_sigma": torch.where(applied, sigma, 0.0), "noise_seed": seed.expand(batch_size).clone()}


def batch_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """The standard normal noise of a batch from its seed (on `device`'s generator)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device)


def apply_gaussian_noise(images: Tensor, sigma: Tensor, seed: Tensor) -> Tensor:
    """x + sigma_i * noise_i, clamped to [0, 1]; samples with sigma 0 are unchanged."""
    if not bool((sigma > 0).any()) or seed.numel() == 0:
        return images
    noise = batch_noise(tuple(images.shape), int(seed[0]), images.device)
    return torch.where(per_sample(sigma > 0), (images + per_sample(sigma) * noise).clamp_(0, 1), images)


def _encode(params: Params, cfg: GaussianNoiseConfig, image_hw: object, encoding: str) -> Tensor:
    sigma = params["noise_sigma"]
    low, high = cfg.sigma
    applied = sigma > 0
    offset = torch.where(applied, scaled(sigma - (low + high) / 2, (high - low) / 2), 0.0)
    return torch.stack((applied.float(), offset), dim=1)


OP = register_op(Op(
    name="gaussian_noise",
    order=80,
    config=GaussianNoiseConfig,
    default=GaussianNoiseConfig(),
    params=(ParamSpec("noise_sigma", "float32", 0.0), ParamSpec("noise_seed", "int64", 0)),
    sample=lambda n, image_hw, cfg, generator, ctx: sample_gaussian_noise(n, cfg, generator),
    apply=lambda x, params, cfg, ctx: apply_gaussian_noise(x, params["noise_sigma"], params["noise_seed"]),
    encode=_encode,
    dim=2,
    weaken=lower_p,
    # at p = 1/2, whether noise was added: sigma is often a single value (torchvision's 0.1), so no bins
    probes=(ProbeVariant(
        "gaussian_noise",
        configure=lambda cfg: cfg.model_copy(update={"p": 0.5}),
        targets=lambda params, _: {"gaussian_noise": (params["noise_sigma"] > 0).long()},
        strength=lambda cfg: cfg.sigma[1],
        changed=lambda params: params["noise_sigma"] > 0,
    ),),
))
