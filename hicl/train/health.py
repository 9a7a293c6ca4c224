"""Is the model still worth a checkpoint? Checked before every checkpoint write.

A diverged run can keep a finite loss: at a huge learning rate SimCLR's and SimSiam's loss sits at a
constant while BatchNorm's running_var holds inf. Saving that would replace the last good checkpoint
with garbage that linear-eval then trusts. So before each save:

- every floating-point parameter and buffer of the model (online network, heads, momentum target,
  queues: all of `state_dict()`) must be finite and below `MAX_ABS` in magnitude;
- the logged loss must not be constant: over the last `CONSTANT_WINDOW` step records,
  max - min <= 1e-6 * max(1, |mean|) means the network has collapsed to a constant output (a
  collapsed SimSiam sits at exactly -1; a saturated contrastive loss at log of the batch size).

On failure `check_health` raises a HiclError naming the step and the first bad tensor; the caller
has not written anything yet, so the previous checkpoint stays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hicl.errors import HiclError

MAX_ABS = 1e10  # no healthy weight, BN statistic or optimiser buffer of a normalised-input network gets here
CONSTANT_WINDOW = 10


def first_bad_tensor(model: nn.Module) -> tuple[str, str] | None:
    """(name, what is wrong) for the first non-finite or exploded tensor of the model's state."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        t = tensor.detach()
        if not torch.isfinite(t).all():
            bad = t[~torch.isfinite(t)].flatten()[0].item()
            return name, f"holds {bad}"
        if t.numel() and t.abs().max().item() > MAX_ABS:
            return name, f"holds {t.abs().max().item():.3g} (above {MAX_ABS:.0e})"
    return None


def constant_loss(records: list[dict[str, Any]], window: int = CONSTANT_WINDOW) -> float | None:
    """The loss value if the last `window` logged step losses are all the same, else None."""
    losses = [r["loss"] for r in records if r.get("kind") == "step" and isinstance(r.get("loss"), float)][-window:]
    if len(losses) < window:
        return None
    spread = max(losses) - min(losses)
    mean = sum(losses) / len(losses)
    return mean if spread <= 1e-6 * max(1.0, abs(mean)) else None


def check_health(model: nn.Module, step: int, records: list[dict[str, Any]]) -> None:
    """Raise a HiclError if the model has diverged or collapsed by `step` (see the module docstring)."""
    bad = first_bad_tensor(model)
    if bad is not None:
        name, what = bad
        raise HiclError(
            f"training diverged by step {step}: {name} {what}; nothing was saved, the last good checkpoint "
            "stays; lower optim.lr or add warm-up (schedule.warmup_epochs)"
        )
    value = constant_loss(records)
    if value is not None:
        raise HiclError(
            f"training collapsed by step {step}: the loss has been {value:.6g} for the last {CONSTANT_WINDOW} "
            "logged steps; nothing was saved, the last good checkpoint stays; lower optim.lr"
        )
