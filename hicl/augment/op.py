"""The augmentation op record and the registry of ops (`OPS`): everything hicl knows about an op.

An op module (`hicl/augment/ops/<name>.py`, or a user's plugin module) builds one `Op` and calls
`register_op`. The manifest's `augment` section, the canonical application order, the pipeline, the
hierarchy's `strength` rule, the expanded-view encodings and the invariance probe all read these
records; no list of op names exists anywhere else. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hicl.config import Section
from hicl.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Params = dict[str, "Tensor"]
ImageSizes = Any  # (height, width) for the batch, or int64 [B, 2] per sample
Encoding = Literal["reference", "normalized"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of an op: its key in the params dict, dtype, trailing shape and identity value.

    `identity` is a constant broadcast to [B, *shape], or (for values that depend on the images, the
    crop's full box) a function (batch_size, image_hw, device) -> tensor.
    """

    key: str
    dtype: Literal["float32", "int64", "bool"]
    identity: float | int | bool | tuple[float | int, ...] | Callable[..., Tensor]
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProbeVariant:
    """How the invariance probe varies an op (one row of `hicl probe-invariance`).

    configure: the op's config -> the config the probe draws with (p = 1 for continuous ops, 1/2 for
    coin flips); targets: (params, image_hw) -> {head: values} (float: binned in 10 equal-count bins;
    int64: classes); changed: params -> bool [N], the pairs that count for invariance (None: all);
    strength: config -> a number, 0 when the op can never change an image (the row is then skipped).
    """

    name: str
    configure: Callable[[Any], Any]
    targets: Callable[[Params, tuple[int, int]], dict[str, Tensor]]
    strength: Callable[[Any], float]
    changed: Callable[[Params], Tensor] | None = None


@dataclass(frozen=True)
class ApplyContext:
    """What a sampler or applier may need beyond its own config and params: the square view's side."""

    view_size: int


@dataclass(frozen=True)
class Op:
    """Everything about one augmentation op.

    - `config`, `default`: the pydantic section `augment.<name>` and its default (the paper's values);
    - `order`: canonical position; a pipeline draws and applies its ops by increasing order;
    - `params`: the parameter tensors `sample` returns (and their identity, for ops not applied);
    - `sample(batch_size, image_hw, cfg, generator, ctx) -> params`: one draw per sample on the generator's
      device, always consuming the same random numbers for a batch size (`image_hw`: the source images'
      size, one for the batch or int64 [B, 2]; `ctx.view_size`: the view's, for ops applied after the crop);
    - `apply(images, params, cfg, ctx) -> images`: float [B, 3, H, W] in [0, 1], batched, a new tensor;
    - `encode(params, cfg, image_hw, encoding) -> float [B, dim]`: the expanded-view vector;
    - `weaken(cfg, levels) -> cfg`: the `strength` hierarchy's config `levels` steps weaker;
    - `probes`: the invariance probe's variants of this op.
    """

    name: str
    order: int
    config: type[Section]
    default: Section
    params: tuple[ParamSpec, ...]
    sample: Callable[[int, ImageSizes, Any, torch.Generator, ApplyContext], Params]
    apply: Callable[[Tensor, Params, Any, ApplyContext], Tensor]
    encode: Callable[[Params, Any, ImageSizes, Encoding], Tensor]
    dim: int
    weaken: Callable[[Any, int], Any]
    probes: tuple[ProbeVariant, ...] = field(default_factory=tuple)


OPS: Registry[Op] = Registry("augmentation op")


def register_op(op: Op) -> Op:
    """Add `op` to `OPS`; its order must be free (two ops at one position have no defined order)."""
    taken = [other.name for other in OPS.values() if other.order == op.order]
    if taken:
        raise ValueError(f"augmentation op {op.name!r}: order {op.order} is taken by {taken[0]!r}")
    return OPS.register(op.name, op)


def op_names() -> tuple[str, ...]:
    """Every registered op in canonical order."""
    return tuple(op.name for op in sorted(OPS.values(), key=lambda op: op.order))


def _check_known(ops: Any) -> None:
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation op {unknown[0]!r}; expected one of {', '.join(op_names())}")


def canonical(ops: Any) -> list[str]:
    """`ops` (registered names, any order) sorted into canonical order; ValueError for an unknown name."""
    _check_known(ops)
    return sorted(ops, key=lambda name: OPS[name].order)


def check_op_names(ops: list[str]) -> list[str]:
    """pydantic validator body: every name registered, none twice."""
    _check_known(ops)
    if len(set(ops)) != len(ops):
        raise ValueError("an augmentation op is listed twice")
    return ops
