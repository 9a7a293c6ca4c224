"""Building blocks the op modules share: uniform draws, coin flips, masked batched application, luma,
normalisation, and the encode / probe / strength pieces of per-sample on-off ops.

torch is imported lazily (`hicl.lazy`), so that op modules, which the manifest imports for their
configs, cost nothing at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hicl.augment.op import ProbeVariant
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision
PROBABILITY_STEP = 0.05  # the `strength` hierarchy: probabilities -0.05 per level below the last stage


class HasProbability(Protocol):
    """Any op config with an application probability p."""

    p: float


def uniform(
    shape: tuple[int, ...], low: float | Tensor, high: float | Tensor, generator: torch.Generator,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """U(low, high) of the given shape on the generator's device (low == high gives exactly low)."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=dtype or torch.float32)
    return u * (high - low) + low


def sample_coin(batch_size: int, cfg: HasProbability, generator: torch.Generator) -> Tensor:
    """bool [B], True with probability cfg.p: whether the op is applied to each sample."""
    return torch.rand(batch_size, generator=generator, device=generator.device) < cfg.p


def apply_where(images: Tensor, parts: Sequence[tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]]) -> Tensor:
    """`images` with each `fn(subset, indices)` written over the samples its (disjoint) mask selects.

    Only the selected samples are gathered and transformed; the result is one `index_copy` of the batch, or
    `images` itself when no mask selects anything.
    """
    indices, outputs = [], []
    for mask, fn in parts:
        idx = mask.nonzero().squeeze(1)
        if idx.numel():
            indices.append(idx)
            outputs.append(fn(images[idx], idx))
    if not indices:
        return images
    if len(indices) == 1:  # the common case: no concatenation copy
        return images.index_copy(0, indices[0], outputs[0])
    return images.index_copy(0, torch.cat(indices), torch.cat(outputs))


def luma(images: Tensor) -> Tensor:
    """Grayscale [N, 1, H, W] = 0.2989 R + 0.587 G + 0.114 B (torchvision's `rgb_to_grayscale`)."""
    r, g, b = images.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def per_sample(values: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, 1], to broadcast one value per sample over [N, C, H, W]."""
    return values.view(-1, 1, 1, 1)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> Tensor:
    """(x - mean) / std per channel, then cast to `dtype` (torchvision's `normalize`, then `to`)."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return images.sub(mean_t).div_(std_t).to(dtype)


def check_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """pydantic validator body: (min, max) with min <= max."""
    if bounds[0] > bounds[1]:
        raise ValueError(f"min {bounds[0]} is greater than max {bounds[1]}")
    return bounds


def scaled(values: Tensor, span: float) -> Tensor:
    """values / span, or zeros when the configured span is 0 (the op then never varies)."""
    return values / span if span > 0 else torch.zeros_like(values)


# ------------------------------------------------------------------- pieces of on-off ops (flip, ...)
def lower_p(cfg: Any, levels: int) -> Any:
    """The `strength` rule of a probability: p - 0.05 per level, at least 0."""
    return cfg.model_copy(update={"p": max(0.0, cfg.p - PROBABILITY_STEP * levels)})


def flag_encoding(key: str) -> Callable[..., Tensor]:
    """Encoder of a bool parameter: 1 where applied, else 0 (one dim)."""
    return lambda params, cfg, image_hw, encoding: params[key].float().unsqueeze(1)


def coin_probe(name: str, key: str) -> ProbeVariant:
    """Probe an on-off op at p = 1/2 (a balanced problem); the target is whether it was applied."""
    return ProbeVariant(
        name,
        configure=lambda cfg: cfg.model_copy(update={"p": 0.5}),
        targets=lambda params, _: {name: params[key].long()},
        strength=lambda cfg: 1.0,
        changed=lambda params: params[key],
    )

