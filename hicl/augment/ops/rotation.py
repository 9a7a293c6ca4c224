"""rotation: quarter turns with probability p (the paper's optional 0/90/180/270 rotation).

Parameter `rotation_k` int64 [B], k counter-clockwise quarter turns (`torch.rot90`), identity 0.
Encoding: cos(k * 90 deg), sin(k * 90 deg). Strength rule: p -0.05 per level. Probe: at p = 1, the
four classes of k.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hicl.augment.batched import apply_where, lower_p, sample_coin
from hicl.augment.op import Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Probability, Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class RotationConfig(Section):
    p: Probability = 0.5


def sample_rotation(batch_size: int, cfg: RotationConfig, generator: torch.Generator) -> Tensor:
    """int64 [B] quarter turns: with probability p, k ~ U{0, 1, 2, 3} (0/90/180/270 degrees); otherwise 0."""
    applied = sample_coin(batch_size, cfg, generator)
    k = torch.randint(0, 4, (batch_size,), generator=generator, device=generator.device)
    return torch.where(applied, k, 0)


def apply_rotation(images: Tensor, k: Tensor) -> Tensor:
    """Rotate each sample by k[i] * 90 degrees counter-clockwise (`torch.rot90`, = torchvision's `rotate`).

    Odd k swaps height and width, so the images must be square.
    """

    def turn(quarters: int) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x, _: torch.rot90(x, quarters, dims=(-2, -1))

    return apply_where(images, [(k == quarters, turn(quarters)) for quarters in (1, 2, 3)])


def _encode(params: Params, cfg: RotationConfig, image_hw: object, encoding: str) -> Tensor:
    # exact table rather than cos/sin of a float angle, so 90 deg gives cos = 0, not 6e-17
    k = params["rotation_k"]
    cos_sin = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], device=k.device)
    return cos_sin[k]


OP = register_op(Op(
    name="rotation",
    order=30,
    config=RotationConfig,
    default=RotationConfig(),
    params=(ParamSpec("rotation_k", "int64", 0),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"rotation_k": sample_rotation(n, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_rotation(x, params["rotation_k"]),
    encode=_encode,
    dim=2,
    weaken=lower_p,
    probes=(ProbeVariant(
        "rotation",
        configure=lambda cfg: cfg.model_copy(update={"p": 1.0}),
        targets=lambda params, _: {"rotation": params["rotation_k"]},
        strength=lambda cfg: 1.0,
        changed=lambda params: params["rotation_k"] != 0,
    ),),
))
