"""Per-view BatchNorm (`hicl.models.view_bn`): one call on [view a; view b; ...] equals plain calls per view."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hicl.models.view_bn import convert_per_view, view_batches

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, VIEWS = 4, 3


def _layers(kind: str, affine: bool, momentum: float | None) -> tuple[nn.Module, nn.Module]:
    cls = nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d
    plain = cls(5, affine=affine, momentum=momentum).double()
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
            plain.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    return plain, convert_per_view(copy.deepcopy(plain))


@pytest.mark.parametrize("kind", ["1d", "2d", "2d channels_last"])
@pytest.mark.parametrize(("affine", "momentum"), [(True, 0.1), (False, 0.1), (True, None)])
def test_one_call_on_stacked_views_equals_plain_calls_per_view(kind, affine, momentum):
    plain, per_view = _layers(kind[:2], affine, momentum)
    gen = torch.Generator().manual_seed(0)
    shape = (VIEWS * ROWS, 5, 3, 3) if kind != "1d" else (VIEWS * ROWS, 5)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 1
    if kind.endswith("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(*shape, generator=gen, dtype=torch.float64)
    x_plain, x_view = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):  # twice: the running statistics and the batch count carry over
        expected = torch.cat([plain(chunk) for chunk in x_plain.split(ROWS)])
        with view_batches(ROWS):
            produced = per_view(x_view)
        assert type(produced.grad_fn).__name__ == "ViewBatchNormFunctionBackward"  # no split/concatenate
        torch.testing.assert_close(produced, expected, rtol=1e-12, atol=1e-12)
        (expected * upstream).sum().backward()
        (produced * upstream).sum().backward()
    torch.testing.assert_close(x_view.grad, x_plain.grad, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(per_view, name), getattr(plain, name), rtol=1e-12, atol=1e-12)
    if affine:
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(per_view, name).grad, getattr(plain, name).grad, rtol=1e-10, atol=1e-12)


def test_outside_view_batches_and_in_eval_mode_the_layer_is_plain():
    plain, per_view = _layers("2d", True, 0.1)
    x = torch.randn(VIEWS * ROWS, 5, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(per_view(x), plain(x))
    plain.eval(), per_view.eval()
    with view_batches(ROWS):
        torch.testing.assert_close(per_view(x), plain(x))


def test_a_batch_that_is_not_whole_views_is_refused():
    _, per_view = _layers("1d", True, 0.1)
    with view_batches(ROWS), pytest.raises(ValueError, match="whole number"):
        per_view(torch.randn(ROWS * 2 + 1, 5, dtype=torch.float64))


def test_a_bfloat16_input_with_float32_parameters_matches_float64_per_view():
    """The reduced-precision path (bf16 activations, float32 weights and statistics, as under autocast on a
    GPU): output, input gradient, weight gradient and running statistics of the per-view layer equal a
    float64 computation of plain calls per view, to bf16's precision (8 bits of mantissa)."""
    plain = nn.BatchNorm2d(5)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    per_view, exact = convert_per_view(copy.deepcopy(plain)), copy.deepcopy(plain).double()
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(VIEWS * ROWS, 5, 3, 3, generator=gen) * 2 + 1).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(x.shape, generator=gen).to(torch.bfloat16)
    x_exact, x_view = x.double().requires_grad_(), x.clone().requires_grad_()
    expected = torch.cat([exact(chunk) for chunk in x_exact.split(ROWS)])
    with view_batches(ROWS):
        produced = per_view(x_view)
    assert produced.dtype == torch.bfloat16 and type(produced.grad_fn).__name__ == "ViewBatchNormFunctionBackward"
    (expected * upstream.double()).sum().backward()
    (produced.float() * upstream.float()).sum().backward()
    assert x_view.grad.dtype == torch.bfloat16 and per_view.weight.grad.dtype == torch.float32

    def close(mine: torch.Tensor, reference: torch.Tensor) -> None:
        scale = reference.abs().max().item()
        torch.testing.assert_close(mine.double(), reference.detach(), rtol=2**-7, atol=2**-7 * scale)

    close(produced, expected)
    close(x_view.grad, x_exact.grad)
    close(per_view.weight.grad, exact.weight.grad)
    close(per_view.bias.grad, exact.bias.grad)
    for name in ("running_mean", "running_var"):
        close(getattr(per_view, name), getattr(exact, name))
