"""Tests for the self-supervised objectives (`hicl.methods`).

Every loss is compared with an independent computation: explicit Python loops over samples / pairs in
float64 `math`, numpy, or a closed form, never with the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hicl.methods import METHODS
from hicl.methods.barlow_twins import BarlowTwins
from hicl.methods.byol import BYOL
from hicl.methods.moco import MoCoV2
from hicl.methods.simclr import SimCLR
from hicl.methods.simsiam import SimSiam
from hicl.methods.barlow_twins import barlow_twins_loss, standardize
from hicl.methods.byol import byol_loss, regression_loss
from hicl.methods.moco import moco_loss
from hicl.methods.simclr import nt_xent_loss
from hicl.methods.simsiam import negative_cosine, simsiam_loss


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.detach().double().tolist()


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _norm(u: list[float]) -> float:
    return math.sqrt(_dot(u, u))


def _cos(u: list[float], v: list[float]) -> float:
    return _dot(u, v) / (_norm(u) * _norm(v))


def _unit(u: list[float]) -> list[float]:
    n = _norm(u)
    return [a / n for a in u]


# ------------------------------------------------------------------------------------------ SimSiam
def test_simsiam_loss_matches_per_sample_negative_cosine_loop():
    p_a, p_b, z_a, z_b = (_randn(6, 5, seed=s) for s in range(4))
    pa, pb, za, zb = map(_rows, (p_a, p_b, z_a, z_b))
    d_ab = sum(-_cos(pa[i], zb[i]) for i in range(6)) / 6
    d_ba = sum(-_cos(pb[i], za[i]) for i in range(6)) / 6
    expected = 0.5 * d_ab + 0.5 * d_ba
    assert simsiam_loss(p_a, p_b, z_a, z_b).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert negative_cosine(p_a, z_b).item() == pytest.approx(d_ab, rel=1e-5, abs=1e-6)


def test_simsiam_stop_gradient_on_z_and_analytic_gradient_on_p():
    p_a, p_b, z_a, z_b = (_randn(4, 3, seed=10 + s).requires_grad_() for s in range(4))
    loss = simsiam_loss(p_a, p_b, z_a, z_b)
    g_pa, g_pb, g_za, g_zb = torch.autograd.grad(loss, [p_a, p_b, z_a, z_b], allow_unused=True)
    for g in (g_za, g_zb):  # stop-gradient: z is reached only through .detach()
        assert g is None or not g.any()
    # d/dp [-cos(p, z)] = -(z / (|p||z|) - cos(p, z) p / |p|^2), times 1/2 (two terms) times 1/B (mean)
    for g_p, p, z in ((g_pa, p_a, z_b), (g_pb, p_b, z_a)):
        assert g_p is not None
        for i, (pi, zi) in enumerate(zip(_rows(p), _rows(z))):
            c, npi, nzi = _cos(pi, zi), _norm(pi), _norm(zi)
            expected = [-(zj / (npi * nzi) - c * pj / npi**2) * 0.5 / 4 for pj, zj in zip(pi, zi)]
            assert g_p[i].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------------------------- BYOL
def test_byol_loss_is_mean_of_both_directions_of_two_minus_two_cos():
    p_a, p_b, t_a, t_b = (_randn(5, 7, seed=20 + s) for s in range(4))
    pa, pb, ta, tb = map(_rows, (p_a, p_b, t_a, t_b))
    # docstring: L = 1/2 [ (2 - 2 cos(p_a, z'_b)) + (2 - 2 cos(p_b, z'_a)) ], each averaged over the batch
    ab = sum(2 - 2 * _cos(pa[i], tb[i]) for i in range(5)) / 5
    ba = sum(2 - 2 * _cos(pb[i], ta[i]) for i in range(5)) / 5
    assert byol_loss(p_a, p_b, t_a, t_b).item() == pytest.approx(0.5 * (ab + ba), rel=1e-5)
    # 2 - 2cos is the squared distance of the unit vectors (closed form, a second independent route)
    sq = sum(sum((u - v) ** 2 for u, v in zip(_unit(pa[i]), _unit(tb[i]))) for i in range(5)) / 5
    assert regression_loss(p_a, t_b).item() == pytest.approx(sq, rel=1e-5)
    # the crossed pairing matters: the same-view pairing gives a different number
    same = 0.5 * (regression_loss(p_a, t_a) + regression_loss(p_b, t_b)).item()
    assert same != pytest.approx(0.5 * (ab + ba), rel=1e-3)


def test_byol_loss_range_and_no_gradient_to_targets():
    p = _randn(3, 4, seed=30)
    assert byol_loss(p, p, p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, p, -p, -p).item() == pytest.approx(4.0, abs=1e-5)
    p_a, p_b, t_a, t_b = (_randn(3, 4, seed=31 + s).requires_grad_() for s in range(4))
    g = torch.autograd.grad(byol_loss(p_a, p_b, t_a, t_b), [p_a, p_b, t_a, t_b], allow_unused=True)
    assert g[0] is not None and g[0].abs().sum() > 0
    assert g[1] is not None and g[1].abs().sum() > 0
    assert g[2] is None or not g[2].any()
    assert g[3] is None or not g[3].any()


# ------------------------------------------------------------------------------------- Barlow Twins
def _np_standardize(z: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    n, d = z.shape
    out = np.empty_like(z)
    for j in range(d):
        col = [z[i, j] for i in range(n)]
        mean = sum(col) / n
        var = sum((c - mean) ** 2 for c in col) / n  # biased, as BatchNorm1d
        for i in range(n):
            out[i, j] = (z[i, j] - mean) / math.sqrt(var + eps)
    return out


def _barlow_terms(z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[float, float]:
    a = _np_standardize(z_a.double().numpy())
    b = _np_standardize(z_b.double().numpy())
    n, d = a.shape
    on, off = 0.0, 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[s, i] * b[s, j] for s in range(n)) / n
            if i == j:
                on += (1 - c_ij) ** 2
            else:
                off += c_ij**2
    return on, off


def test_standardize_matches_looped_batchnorm_statistics():
    z = _randn(9, 4, seed=40) * 3 + 1
    assert np.allclose(standardize(z).double().numpy(), _np_standardize(z.double().numpy()), atol=1e-5)
    bn = nn.BatchNorm1d(4, affine=False).train()
    assert torch.allclose(standardize(z), bn(z), atol=1e-5)


@pytest.mark.parametrize(("lambd", "scale"), [(0.0, 1.0), (1.0, 1.0), (3.9e-3, 1 / 32), (0.37, 0.25)])
def test_barlow_twins_loss_matches_looped_cross_correlation(lambd, scale):
    z_a = _randn(10, 6, seed=41)
    z_b = 0.5 * z_a + _randn(10, 6, seed=42)
    on, off = _barlow_terms(z_a, z_b)
    assert on > 0 and off > 0
    expected = scale * (on + lambd * off)
    assert barlow_twins_loss(z_a, z_b, lambd, scale).item() == pytest.approx(expected, rel=1e-4)


def test_barlow_twins_identical_views_have_near_zero_on_diagonal():
    z = _randn(512, 8, seed=43)
    # with lambda 0 only the on-diagonal term remains: C_ii = var / (var + eps) ~ 1
    assert barlow_twins_loss(z, z, 0.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    on, _ = _barlow_terms(z[:64], z[:64])
    assert on == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------- NT-Xent
def _nt_xent_loop(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> float:
    n = z_a.shape[0]
    u = [_unit(r) for r in _rows(torch.cat([z_a, z_b]))]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        pos = math.exp(_dot(u[i], u[j]) / t)
        others = [k for k in range(2 * n) if k != i]
        negatives = [k for k in others if k != j]
        assert len(negatives) == 2 * n - 2
        denom = pos + sum(math.exp(_dot(u[i], u[k]) / t) for k in negatives)
        total += -math.log(pos / denom)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0])
def test_nt_xent_matches_loop_over_all_anchors(temperature):
    z_a = _randn(5, 8, seed=50)
    z_b = z_a + 0.7 * _randn(5, 8, seed=51)
    expected = _nt_xent_loop(z_a, z_b, temperature)
    assert nt_xent_loss(z_a, z_b, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_swapping_views_is_symmetric_and_batch_of_one_has_zero_negatives():
    z_a, z_b = _randn(4, 3, seed=52), _randn(4, 3, seed=53)
    assert nt_xent_loss(z_a, z_b, 0.3).item() == pytest.approx(nt_xent_loss(z_b, z_a, 0.3).item(), rel=1e-6)
    # B = 1: the positive is the only term of the denominator (2B - 2 = 0 negatives) -> loss 0
    assert nt_xent_loss(z_a[:1], z_b[:1], 0.3).item() == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------------------------------------------- MoCo
def _moco_loop(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    qs, ks, qu = [_unit(r) for r in _rows(q)], [_unit(r) for r in _rows(k)], _rows(queue)
    total = 0.0
    for i in range(len(qs)):
        logits = [_dot(qs[i], ks[i]) / t] + [_dot(qs[i], row) / t for row in qu]
        m = max(logits)
        log_sum = m + math.log(sum(math.exp(x - m) for x in logits))
        total += log_sum - logits[0]  # cross entropy with label 0 (the positive key)
    return total / len(qs)


def _unit_queue(size: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(_randn(size, dim, seed=seed), dim=1)


def test_moco_loss_matches_loop_with_queue_negatives():
    q, k = _randn(4, 6, seed=60) * 2, _randn(4, 6, seed=61)
    queue = _unit_queue(7, 6, seed=62)
    for t in (0.2, 0.07):
        assert moco_loss(q, k, queue, t).item() == pytest.approx(_moco_loop(q, k, queue, t), rel=1e-5)


def test_moco_stage_loss_is_symmetrised_and_keys_get_no_gradient():
    cfg = MoCoV2.Config(proj_dim=6, queue_size=5, temperature=0.3)
    torch.manual_seed(0)
    method = MoCoV2(cfg, num_stages=2)
    q_a, q_b = (_randn(3, 6, seed=63 + s).requires_grad_() for s in range(2))
    k_a, k_b = (_randn(3, 6, seed=65 + s).requires_grad_() for s in range(2))
    queue = method.queues[1].clone()
    loss = method.stage_loss(1, q_a, q_b, k_a, k_b)
    expected = 0.5 * (_moco_loop(q_a, k_b, queue, 0.3) + _moco_loop(q_b, k_a, queue, 0.3))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    g = torch.autograd.grad(loss, [q_a, q_b, k_a, k_b], allow_unused=True)
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    assert (g[2] is None or not g[2].any()) and (g[3] is None or not g[3].any())
    # the initial queue holds unit vectors
    assert torch.allclose(method.queues.norm(dim=2), torch.ones(2, 5), atol=1e-5)


def _ring_simulation(queue: list, ptr: int, keys: list) -> tuple[list, int]:
    """A FIFO ring buffer written one key at a time (oldest entry overwritten)."""
    queue = list(queue)
    for key in keys:
        queue[ptr] = key
        ptr = (ptr + 1) % len(queue)
    return queue, ptr


def _from_pointer(queue: list, ptr: int) -> list:
    """The entries from oldest to newest: read the ring starting at the write pointer."""
    return queue[ptr:] + queue[:ptr]


def _enqueue(method: MoCoV2, stage: int, t_a: torch.Tensor, t_b: torch.Tensor) -> list[list[float]]:
    q = _randn(t_a.shape[0], t_a.shape[1], seed=99)
    method.stage_loss(stage, q, q, t_a, t_b)  # reads the queue, then enqueues
    # what the docstring says is enqueued: the L2-normalised keys of view a, then view b
    return [_unit(r) for r in _rows(torch.cat([t_a, t_b]))]


def test_moco_queue_enqueues_at_pointer_and_wraps_around():
    cfg = MoCoV2.Config(proj_dim=3, queue_size=10)
    torch.manual_seed(1)
    method = MoCoV2(cfg, num_stages=2)
    untouched_stage0 = method.queues[0].clone()
    ring, ptr = _rows(method.queues[1]), 0

    # step 1: 2 x 3 = 6 keys into slots 0..5, pointer 6
    keys = _enqueue(method, 1, _randn(3, 3, seed=70), _randn(3, 3, seed=71))
    ring, ptr = _ring_simulation(ring, ptr, keys)
    assert int(method.queue_ptr[1]) == ptr == 6
    assert np.allclose(method.queues[1].double().numpy(), np.array(ring), atol=1e-6)
    assert np.allclose(method.queues[1, :6].double().numpy(), np.array(keys), atol=1e-6)

    # step 2: 6 more keys wrap: slots 6..9 then 0..1, pointer 2
    keys = _enqueue(method, 1, _randn(3, 3, seed=72), _randn(3, 3, seed=73))
    ring, ptr = _ring_simulation(ring, ptr, keys)
    assert int(method.queue_ptr[1]) == ptr == 2
    assert np.allclose(method.queues[1].double().numpy(), np.array(ring), atol=1e-6)
    got_slots = [6, 7, 8, 9, 0, 1]
    assert np.allclose(method.queues[1, got_slots].double().numpy(), np.array(keys), atol=1e-6)

    # the other stage was never enqueued to
    assert torch.equal(method.queues[0], untouched_stage0)
    assert int(method.queue_ptr[0]) == 0


def test_moco_queue_smaller_than_number_of_keys_keeps_newest_in_fifo_order():
    cfg = MoCoV2.Config(proj_dim=3, queue_size=4)
    torch.manual_seed(2)
    method = MoCoV2(cfg, num_stages=1)
    ring, ptr = _rows(method.queues[0]), 0
    # first move the pointer off zero with 2 keys, then enqueue 2 x 5 = 10 keys into a queue of 4
    ring, ptr = _ring_simulation(ring, ptr, _enqueue(method, 0, _randn(1, 3, seed=80), _randn(1, 3, seed=81)))
    assert int(method.queue_ptr[0]) == ptr == 2
    keys = _enqueue(method, 0, _randn(5, 3, seed=82), _randn(5, 3, seed=83))
    ring, ptr = _ring_simulation(ring, ptr, keys)
    got = _rows(method.queues[0])
    got_ptr = int(method.queue_ptr[0])
    # the queue holds exactly the 4 newest keys, and reading from the pointer gives oldest -> newest
    assert np.allclose(np.array(_from_pointer(got, got_ptr)), np.array(keys[-4:]), atol=1e-6)
    assert np.allclose(np.array(_from_pointer(ring, ptr)), np.array(keys[-4:]), atol=1e-6)
    # the next 2 keys overwrite the two oldest (keys[-4], keys[-3]) and nothing else
    more = _enqueue(method, 0, _randn(1, 3, seed=84), _randn(1, 3, seed=85))
    got2 = _rows(method.queues[0])
    expected_fifo = keys[-2:] + more
    assert np.allclose(np.array(_from_pointer(got2, int(method.queue_ptr[0]))), np.array(expected_fifo), atol=1e-6)


# ---------------------------------------------------------------------------- the Method classes
def _cfg(name: str):
    small = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8, "queue_size": 64}
    config = METHODS[name].Config
    return config(**{k: v for k, v in small.items() if k in config.model_fields})


@pytest.mark.parametrize("name", list(METHODS))
def test_method_stage_loss_is_scalar_and_reaches_every_parameter(name):
    torch.manual_seed(0)
    cfg = _cfg(name)
    method_cls = METHODS[name]
    method = method_cls(cfg, num_stages=2)
    projector = method_cls.make_projector(cfg, 24)
    features = _randn(16, 24, seed=90)
    z_a, z_b = projector(features).chunk(2)
    t_a = t_b = None
    if method_cls.uses_target:
        with torch.no_grad():
            t_a, t_b = method_cls.make_projector(cfg, 24)(features).chunk(2)
    loss = method.stage_loss(1, z_a, z_b, t_a, t_b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    params = dict(method.named_parameters())
    params.update({f"projector.{n}": p for n, p in projector.named_parameters()})
    # stage 0's predictor is not used by a stage-1 loss
    used = {n: p for n, p in params.items() if not n.startswith("predictors.0.")}
    missing = [n for n, p in used.items() if p.grad is None or not p.grad.any()]
    assert not missing, f"{name}: no gradient for {missing}"
    unused = [n for n, p in params.items() if n.startswith("predictors.0.") and p.grad is not None]
    assert not unused
    if hasattr(method, "predictors"):
        assert any(n.startswith("predictors.1.") for n in params)  # the predictor exists and was checked
        assert len(method.predictors) == 2
    else:
        assert not list(method.parameters())


def test_projector_and_predictor_shapes_follow_the_docstrings():
    x = _randn(12, 24, seed=91)
    # (linear layers, has BN) of each projector, as the method docstrings / papers describe them
    expected = {SimSiam: (3, True), BarlowTwins: (3, True), BYOL: (2, True), SimCLR: (2, True), MoCoV2: (2, False)}
    assert set(expected) == set(METHODS.values())
    for cls, (layers, bn) in expected.items():
        proj = cls.make_projector(cls.Config(proj_hidden_dim=32, proj_dim=16), 24)
        assert proj(x).shape == (12, 16)
        linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
        assert linears[0].in_features == 24 and linears[-1].out_features == 16
        assert len(linears) == layers, cls
        assert any(isinstance(m, nn.BatchNorm1d) for m in proj.modules()) == bn, cls
    cfg = SimSiam.Config(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8)
    # SimSiam's projector ends with a non-affine BN: train-mode outputs are standardised per dimension
    out = SimSiam.make_projector(cfg, 24).train()(x).detach().double().numpy()
    assert np.allclose(out.mean(0), 0, atol=1e-5)
    assert np.allclose(out.var(0), 1, atol=1e-2)
    for cls in (SimSiam, BYOL):
        method = cls(cls.Config(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8), num_stages=3)
        assert len(method.predictors) == 3
        assert method.predictors[2](_randn(4, 16, seed=92)).shape == (4, 16)
    assert BYOL.uses_target and MoCoV2.uses_target
    assert not (SimSiam.uses_target or SimCLR.uses_target or BarlowTwins.uses_target)


def test_simsiam_fixed_lr_parameters_are_the_predictors():
    on = SimSiam(SimSiam.Config(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8), 2)
    assert {id(p) for p in on.fixed_lr_parameters()} == {id(p) for p in on.predictors.parameters()}
    off = SimSiam(on.cfg.model_copy(update={"fixed_predictor_lr": False}), 2)
    assert off.fixed_lr_parameters() == []
    assert BYOL(BYOL.Config(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8), 2).fixed_lr_parameters() == []


def test_byol_target_momentum_rises_along_a_cosine_and_moco_stays_constant():
    byol = BYOL(BYOL.Config(proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=4, momentum=0.99), 1)
    moco = MoCoV2(MoCoV2.Config(proj_hidden_dim=8, proj_dim=4, queue_size=8, momentum=0.99), 1)
    total = 100
    for step in (0, 25, 50, 100):
        expected = 1 - 0.01 * (math.cos(math.pi * step / total) + 1) / 2
        assert byol.target_momentum(step, total) == pytest.approx(expected)
        assert moco.target_momentum(step, total) == 0.99
    assert byol.target_momentum(0, total) == pytest.approx(0.99) and byol.target_momentum(total, total) == pytest.approx(1.0)
