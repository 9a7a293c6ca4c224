"""An augmentation op from outside hicl: `channel_shuffle`, a random permutation of the RGB channels.

A manifest registers it with `augment: {plugins: [hicl_channel_shuffle]}` (this module must be
importable); docs/extending.md walks through every part. torchvision's `RandomChannelPermutation`
does the same per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, lower_p, sample_coin
from hicl.augment.op import ApplyContext, Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:  # torch loads when the op first runs, not when the manifest imports this module
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class ChannelShuffleConfig(Section):
    """The `augment.channel_shuffle` section."""

    p: Probability = 0.3


def sample(
    batch_size: int, image_hw: object, cfg: ChannelShuffleConfig, generator: torch.Generator, ctx: ApplyContext
) -> Params:
    """`channel_order` int64 [B, 3]: with probability p a uniform permutation (argsort of 3 uniforms), else (0, 1, 2)."""
    applied = sample_coin(batch_size, cfg, generator)
    order = torch.rand((batch_size, 3), generator=generator, device=generator.device).argsort(dim=1)
    identity = torch.arange(3, device=generator.device).expand(batch_size, 3)
    return {"channel_order": torch.where(applied.unsqueeze(1), order, identity)}


def apply(images: Tensor, params: Params, cfg: ChannelShuffleConfig, ctx: ApplyContext) -> Tensor:
    """Output channel c of sample i is its input channel order[i, c] (torchvision's `permute_channels`)."""
    order = params["channel_order"]
    moved = (order != torch.arange(3, device=order.device)).any(dim=1)

    def permute(x: Tensor, idx: Tensor) -> Tensor:
        return x.gather(1, order[idx].view(-1, 3, 1, 1).expand_as(x))

    return apply_where(images, [(moved, permute)])


def encode(params: Params, cfg: ChannelShuffleConfig, image_hw: object, encoding: str) -> Tensor:
    """One-hot of each output channel's source channel: 9 values, identity = the flattened 3x3 identity."""
    return torch.nn.functional.one_hot(params["channel_order"], 3).flatten(1)


def permutation_class(params: Params, image_hw: tuple[int, int]) -> dict[str, Tensor]:
    """The probe's target: which of the 6 permutations was drawn (0 = the identity)."""
    order = params["channel_order"]
    return {"channel_shuffle": order[:, 0] * 2 + (order[:, 1] > order[:, 2]).long()}


OP = register_op(Op(
    name="channel_shuffle",
    order=45,  # after color_jitter (40), before grayscale (50)
    config=ChannelShuffleConfig,
    default=ChannelShuffleConfig(),
    params=(ParamSpec("channel_order", "int64", (0, 1, 2), (3,)),),
    sample=sample,
    apply=apply,
    encode=encode,
    dim=9,
    weaken=lower_p,
    probes=(ProbeVariant(
        "channel_shuffle",
        configure=lambda cfg: cfg.model_copy(update={"p": 1.0}),
        targets=permutation_class,
        strength=lambda cfg: 1.0,
        changed=lambda params: (params["channel_order"] != torch.arange(3)).any(dim=1),
    ),),
))
