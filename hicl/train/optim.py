"""Optimisers (SGD, LARS, AdamW) with per-group rules, and the learning-rate schedule.

Parameter groups: parameters of the method's `fixed_lr_parameters()` (SimSiam's predictor) keep the
base lr; biases and normalisation weights (1-d tensors) get no weight decay and, under LARS, no
trust-ratio adaptation (as the BYOL and Barlow Twins papers do). On CUDA the fused kernels of SGD and
AdamW are used (one kernel for all parameters); LARS runs on foreach kernels everywhere.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from hicl.manifest import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017; BYOL/Barlow Twins form).

    For each parameter w with gradient g, in a group with `adapt=True`:

        u = g + wd * w
        u <- u * eta * ||w|| / ||u||      (only if ||w|| > 0 and ||u|| > 0; else u unchanged)
        m <- momentum * m + u
        w <- w - lr * m

    In a group with `adapt=False` (biases, norms) the decay and the trust ratio are skipped:
    u = g, then the same momentum update.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, adapt: bool = True):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "adapt": adapt}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if group["adapt"]:
                if group["weight_decay"]:
                    updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(updates))
                ratio = group["trust_coefficient"] * w_norm / u_norm
                ratio = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                updates = torch._foreach_mul(updates, list(ratio.unbind()))
            buffers = []
            for p, u in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def scaled_lr(cfg: OptimConfig) -> float:
    """Linear scaling rule (SimSiam, BYOL, MoCo): lr = base_lr * batch_size / 256."""
    return cfg.lr * cfg.batch_size / 256


def parameter_groups(cfg: OptimConfig, model: nn.Module, fixed_lr: list[nn.Parameter]) -> list[dict]:
    """Groups keyed by (keeps the base lr, is a bias or norm weight), each with its own decay rule."""
    fixed_ids = {id(p) for p in fixed_lr}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in fixed_ids, p.ndim <= 1), []).append(p)
    lr = scaled_lr(cfg)
    return [
        {"params": params, "fixed_lr": fixed, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": lr,
         **({"adapt": not no_decay} if cfg.name == "lars" else {})}
        for (fixed, no_decay), params in sorted(groups.items())
    ]


def _kernel_options(optimizer: type[torch.optim.Optimizer], params: list[nn.Parameter]) -> dict[str, bool]:
    """`fused=True` where every parameter is on CUDA and the optimiser has a fused kernel; else torch's
    default (foreach on CUDA, the per-parameter loop on CPU, which keeps CPU runs as they were)."""
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    return {"fused": True} if on_cuda and "fused" in inspect.signature(optimizer).parameters else {}


def build_optimizer(cfg: OptimConfig, model: nn.Module, fixed_lr: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser `optim.name` names, over `parameter_groups`; call it after the model is on its device."""
    groups = parameter_groups(cfg, model, fixed_lr)
    params = [p for g in groups for p in g["params"]]
    lr = scaled_lr(cfg)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **_kernel_options(torch.optim.SGD, params))
    betas = (cfg.momentum, 0.999)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **_kernel_options(torch.optim.AdamW, params))


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from 0, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr if group["fixed_lr"] else lr
