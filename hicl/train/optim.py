"""Optimiser and learning-rate schedule: linear-scaled lr with warm-up and cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from hicl.manifest import OptimConfig


def scaled_lr(cfg: OptimConfig) -> float:
    """Linear scaling rule (SimSiam, BYOL, MoCo): lr = base_lr * batch_size / 256."""
    return cfg.lr * cfg.batch_size / 256


def build_optimizer(cfg: OptimConfig, model: nn.Module, fixed_lr: list[nn.Parameter]) -> torch.optim.Optimizer:
    """One group that follows the schedule and one (possibly empty) that keeps the base lr.

    Biases and normalisation weights (1-d tensors) get no weight decay.
    """
    fixed_ids = {id(p) for p in fixed_lr}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in fixed_ids, p.ndim <= 1), []).append(p)
    lr = scaled_lr(cfg)
    param_groups = [
        {"params": params, "fixed_lr": fixed, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": lr}
        for (fixed, no_decay), params in sorted(groups.items())
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=lr)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from 0, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr if group["fixed_lr"] else lr

