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

In eager mode a converted BatchNorm1d/2d/3d writes every chunk's normalised rows straight into one
output tensor, and its backward every chunk's input gradient straight into one gradient tensor
(`ViewBatchNormFunction`), with the same kernels a plain layer calls per chunk; splitting the
batch and concatenating the chunks' outputs instead costs a copy of every BN output in the forward and
of every BN input gradient in the backward, about a tenth of a ResNet-50 step on a CPU. Under
torch.compile (which fuses such copies itself) and for other BN classes (SyncBatchNorm) the chunks
go through the layer's own forward and are concatenated.

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


class ViewBatchNormFunction(torch.autograd.Function):
    """Training-mode BN of every consecutive `rows`-row chunk g of x with that chunk's statistics,

        y_g = weight * (x_g - mean_g) / sqrt(var_g + eps) + bias,

    each chunk's output written into its rows of one tensor (and in the backward each chunk's input
    gradient into its rows of one gradient tensor; weight and bias gradients summed over the chunks).
    `factors[g]` is the running-statistics momentum of chunk g, applied in chunk order.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, rows: int, factors: list[float], eps: float):
        out = torch.empty_like(x)
        chunks = x.shape[0] // rows
        # the kernels keep their statistics in float32 for reduced-precision inputs, like a plain layer
        stats = x.new_empty((2, chunks, x.shape[1]), dtype=torch.promote_types(x.dtype, torch.float32))
        for g in range(chunks):
            torch.ops.aten.native_batch_norm.out(
                x.narrow(0, g * rows, rows), weight, bias, running_mean, running_var, True, factors[g], eps,
                out=out.narrow(0, g * rows, rows), save_mean=stats[0, g], save_invstd=stats[1, g],
            )
        ctx.save_for_backward(x, weight, stats)
        ctx.rows, ctx.eps = rows, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, stats = ctx.saved_tensors
        rows = ctx.rows
        grad_out = grad_out.contiguous(memory_format=_memory_format(x))
        grad_in = torch.empty_like(x)
        affine = weight is not None
        # the out= kernel fills all three outputs; without affine parameters their gradients are dropped
        channels = stats.shape[-1]
        chunk_weight, chunk_bias = (x.new_empty(channels, dtype=stats.dtype) for _ in range(2))
        grad_weight, grad_bias = (torch.zeros_like(chunk_weight) for _ in range(2))
        for g in range(x.shape[0] // rows):
            torch.ops.aten.native_batch_norm_backward.out(
                grad_out.narrow(0, g * rows, rows), x.narrow(0, g * rows, rows), weight, None, None,
                stats[0, g], stats[1, g], True, ctx.eps, [True, True, True],
                out0=grad_in.narrow(0, g * rows, rows), out1=chunk_weight, out2=chunk_bias,
            )
            grad_weight += chunk_weight
            grad_bias += chunk_bias
        if not affine:
            return grad_in, None, None, None, None, None, None, None
        return grad_in, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None, None, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class PerViewBatchNorm:
    """Mixin put in front of a BN class: splits training-mode batches into views of `view_batches` rows."""

    # whether the BN class's own forward is torch's plain one, which `_chunk_factors` reproduces
    _plain_forward: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _VIEW_BATCH.get()
        uses_batch_stats = self.training or self.running_mean is None
        if rows is None or not uses_batch_stats or x.shape[0] <= rows:
            return super().forward(x)
        if x.shape[0] % rows:
            raise ValueError(
                f"per-view BatchNorm: a batch of {x.shape[0]} rows is not a whole number of {rows}-row views"
            )
        if not self._plain_forward or torch.compiler.is_compiling() or not _layout_kept(x):
            return torch.cat([super(PerViewBatchNorm, self).forward(chunk) for chunk in x.split(rows)])
        self._check_input_dim(x)
        tracked = self.training and self.track_running_stats
        return ViewBatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean if tracked else None,
            self.running_var if tracked else None, rows, self._chunk_factors(x.shape[0] // rows), self.eps,
        )

    def _chunk_factors(self, chunks: int) -> list[float]:
        """The momentum each of `chunks` consecutive plain calls would use (counting the batches tracked)."""
        if not (self.training and self.track_running_stats):
            return [0.0] * chunks
        factors = []
        for _ in range(chunks):
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            cumulative = self.momentum is None
            factors.append(1.0 / float(self.num_batches_tracked) if cumulative else self.momentum)
        return factors


def _layout_kept(x: torch.Tensor) -> bool:
    """Chunks of x along the batch are dense in x's own layout (plain or channels-last contiguous)."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


_CLASSES: dict[type, type] = {}


def _per_view_class(cls: type) -> type:
    if cls not in _CLASSES:
        plain = cls.forward is _BatchNorm.forward
        _CLASSES[cls] = type(
            f"PerView{cls.__name__}", (PerViewBatchNorm, cls), {"__module__": __name__, "_plain_forward": plain}
        )
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
