"""Collapse figures against an independent numpy computation, and the alarm's counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hicl.train.collapse import CollapseAlarm, StageHealth, effective_rank, spread, stage_health, view_cosine


def numpy_spread(z: np.ndarray) -> float:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    return float(unit.std(axis=0).mean() * math.sqrt(z.shape[1]))


def numpy_effective_rank(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture
def embeddings() -> torch.Tensor:
    # anisotropic on purpose: the rank is neither 1 nor d
    scales = torch.linspace(0.05, 2.0, 24)
    return torch.randn(200, 24, generator=torch.Generator().manual_seed(0)) * scales


def test_spread_and_rank_match_numpy(embeddings):
    z = embeddings.numpy()
    assert spread(embeddings).item() == pytest.approx(numpy_spread(z), rel=1e-4)
    assert effective_rank(embeddings).item() == pytest.approx(numpy_effective_rank(z), rel=1e-3)
    a, b = embeddings[:100], embeddings[100:]
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert view_cosine(a, b).item() == pytest.approx(cos.mean().item(), abs=1e-6)


def test_healthy_and_collapsed_extremes():
    healthy = torch.randn(4096, 32, generator=torch.Generator().manual_seed(1))
    assert spread(healthy).item() == pytest.approx(1.0, abs=0.05)
    assert effective_rank(healthy).item() > 30  # of 32
    constant = torch.ones(256, 32) * torch.linspace(-1, 1, 32)
    assert spread(constant).item() == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(constant).item() == pytest.approx(1.0, abs=1e-3)
    figures = stage_health(constant[:128], constant[128:])
    assert figures[2].item() == pytest.approx(1.0, abs=1e-6)  # identical views


def test_the_alarm_needs_patience_consecutive_low_checks_per_stage():
    alarm = CollapseAlarm(threshold=0.1, patience=3)
    low, high = StageHealth(0.01, 1.0, 1.0), StageHealth(0.9, 10.0, 0.5)
    assert alarm.update([low, high]) == []
    assert alarm.update([low, high]) == []
    assert alarm.update([high, low]) == []  # stage 0 recovered: its count restarts
    assert alarm.update([low, low]) == []
    assert alarm.update([low, low]) == [1]  # stage 1: three low checks in a row
    assert alarm.update([low, low]) == [0]  # stage 0 too; stage 1 fires once
