"""Per-view BatchNorm: every BN layer normalises each view's batch on its own, inside one forward.

hicl sends a stage's two views through the network together, as one batch [view a; view b] of 2B
images (and with `hierarchy.forward: fused`, the pairs of several stages concatenated). A plain BN
layer then normalises with the mean and variance of all of them. The reference code instead calls the
network once per view, so every BN sees B images of one view. `hierarchy.bn: per_view` reproduces that
without splitting the forward (ghost-batch style): inside `view_batches(B)` a converted BN layer in
training mode cuts its input into consecutive chunks of B rows and normalises each chunk with that
chunk's statistics,

    y_i = gamma * (x_i - mean_g) / sqrt(var_g + eps) + beta,   g = the chunk of row i,

and updates its running statistics once per chunk, in order (view a, then view b, then the next
stage's views with `fused`), exactly as consecutive calls on the chunks would. Convolutions and
linear layers still run once over the whole batch. Outside `view_batches`, in eval mode (running
statistics) or on batches of at most B rows, a converted layer is the plain layer.

`convert_per_view(module)` changes the class of every BN layer in place (to a subclass of its own
class), so parameter names, state_dict keys and `isinstance` checks stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_VIEW_BATCH: ContextVar[int | None] = ContextVar("hicl_view_batch", default=None)


class PerViewBatchNorm:
    """Mixin put in front of a BN class: splits training-mode batches into views of `view_batches` rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = super().forward
        rows = _VIEW_BATCH.get()
        uses_batch_stats = self.training or self.running_mean is None
        if rows is None or not uses_batch_stats or x.shape[0] <= rows:
            return plain(x)
        if x.shape[0] % rows:
            raise ValueError(
                f"per-view BatchNorm: a batch of {x.shape[0]} rows is not a whole number of {rows}-row views"
            )
        return torch.cat([plain(chunk) for chunk in x.split(rows)])


_CLASSES: dict[type, type] = {}


def _per_view_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"PerView{cls.__name__}", (PerViewBatchNorm, cls), {"__module__": __name__})
    return _CLASSES[cls]


def convert_per_view(module: nn.Module) -> nn.Module:
    """Make every BatchNorm layer under `module` per-view (in place); returns `module`."""
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and not isinstance(layer, PerViewBatchNorm):
            layer.__class__ = _per_view_class(type(layer))
    return module


@contextmanager
def view_batches(rows: int) -> Iterator[None]:
    """Within this block, converted BN layers treat every `rows` consecutive rows as one view's batch."""
    token = _VIEW_BATCH.set(rows)
    try:
        yield
    finally:
        _VIEW_BATCH.reset(token)
