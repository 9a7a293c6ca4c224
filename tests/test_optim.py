"""Tests for the optimisers and parameter groups (`hicl.train.optim`), against hand-computed updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hicl.manifest import OptimConfig
from hicl.train.optim import LARS, build_optimizer, parameter_groups, set_lr


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _grads(model: nn.Module, seed: int) -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()


def _lars_reference(w, g, buf, lr, momentum, wd, eta, adapt):
    """The LARS update in float64 numpy, written out from the BYOL / Barlow Twins pseudo-code."""
    u = g + wd * w if adapt else g
    if adapt:
        w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
        if w_norm > 0 and u_norm > 0:
            u = u * eta * w_norm / u_norm
    buf = momentum * buf + u
    return w - lr * buf, buf


def test_lars_matches_hand_computed_updates_and_skips_biases_and_norms():
    model = _tiny()
    cfg = OptimConfig(
        name="lars", lr=0.4 * 256 / 8, batch_size=8, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.01
    )
    optimizer = build_optimizer(cfg, model, [])
    assert isinstance(optimizer, LARS)
    names = {id(p): n for n, p in model.named_parameters()}
    adapted = {names[id(p)] for g in optimizer.param_groups if g["adapt"] for p in g["params"]}
    assert adapted == {"0.weight"}  # the bias and both BN parameters are excluded
    params = dict(model.named_parameters())
    state = {n: (p.detach().double().numpy().copy(), np.zeros(p.shape)) for n, p in params.items()}
    for step in range(3):
        _grads(model, seed=step)
        grads = {n: p.grad.double().numpy().copy() for n, p in params.items()}
        optimizer.step()
        for n, p in params.items():
            w, buf = state[n]
            adapt = n == "0.weight"
            wd = 1e-2 if adapt else 0.0
            state[n] = _lars_reference(w, grads[n], buf, 0.4, 0.9, wd, 0.01, adapt)
            assert np.allclose(p.detach().double().numpy(), state[n][0], rtol=1e-5, atol=1e-6), (step, n)
    # the trust ratio matters: plain SGD with the same lr would have moved the weight much further
    w0 = _tiny()[0].weight.detach()
    assert (params["0.weight"].detach() - w0).norm() < 0.2 * w0.norm()


def test_lars_leaves_a_zero_weight_to_the_plain_gradient():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    LARS([w], lr=0.1, momentum=0.0, weight_decay=0.5, trust_coefficient=0.001).step()
    assert torch.allclose(w.detach(), -0.1 * torch.tensor([[1.0, -2.0], [0.5, 0.0]]))


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_groups_exclude_biases_and_norms_from_decay_and_keep_the_fixed_lr(name):
    model = _tiny()
    cfg = OptimConfig(name=name, lr=0.1, batch_size=256, weight_decay=0.01)
    fixed = [model[1].weight]
    groups = parameter_groups(cfg, model, fixed)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}
    assert sum(len(g["params"]) for g in groups) == 4
    optimizer = build_optimizer(cfg, model, fixed)
    set_lr(optimizer, 0.01, base_lr=0.1)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(model[1].weight)] == 0.1 and lrs[id(model[0].weight)] == 0.01
    _grads(model, seed=0)
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


def test_adamw_first_step_is_lr_times_sign_plus_decoupled_decay():
    # Adam's first bias-corrected step is g / (|g| + eps) ~ sign(g); AdamW then also shrinks w by lr * wd.
    model = _tiny()
    cfg = OptimConfig(name="adamw", lr=0.01, batch_size=256, weight_decay=0.1)
    optimizer = build_optimizer(cfg, model, [])
    w = model[0].weight
    before = w.detach().clone()
    _grads(model, seed=1)
    g = w.grad.clone()
    optimizer.step()
    expected = before * (1 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8)
    assert torch.allclose(w.detach(), expected, atol=1e-6)
