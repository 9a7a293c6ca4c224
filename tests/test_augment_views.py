"""Per-view recipes (`augment.views`): each view of a pair draws from its own settings, in every mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hicl.augment.hierarchy import StageAugmenter
from hicl.manifest import AugmentConfig, HierarchyConfig, load_manifest

BATCH = 2000
VIEWS = [{"blur": {"p": 1.0}, "solarize": {"p": 0.0}}, {"blur": {"p": 0.1}, "solarize": {"p": 0.2}}]
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def _rates(mode: str) -> list[tuple[float, float, float, float]]:
    """(blur rate view 1, view 2, solarize rate view 1, view 2) of every stage."""
    augment = AugmentConfig(ops=["crop", "color_jitter", "grayscale", "blur", "flip", "solarize"], views=VIEWS)
    groups = [["crop", "color_jitter"], ["grayscale"], ["blur", "solarize"], ["flip"]]
    augmenter = StageAugmenter(HierarchyConfig(mode=mode, groups=groups), augment, 8)
    images = torch.randint(0, 256, (BATCH, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rates = []
    for params in augmenter(images, torch.Generator().manual_seed(1)).params:
        blurred, solarized = (params["blur_sigma"] > 0).double(), params["solarize"].double()
        rates.append((blurred[:BATCH].mean().item(), blurred[BATCH:].mean().item(),
                      solarized[:BATCH].mean().item(), solarized[BATCH:].mean().item()))
    return rates


def _close(rate: float, p: float) -> bool:
    return abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / BATCH) + 1e-12


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("off", [(1.0, 0.1, 0.0, 0.2)]),
        # blur and solarize join at stage 3
        ("add_one", [(0.0, 0.0, 0.0, 0.0)] * 2 + [(1.0, 0.1, 0.0, 0.2)] * 2),
        # each view weakened by -0.05 per level below the last stage, from its own p
        ("strength", [(1.0 - 0.05 * lv, max(0.0, 0.1 - 0.05 * lv), 0.0, max(0.0, 0.2 - 0.05 * lv)) for lv in (3, 2, 1, 0)]),
    ],
)
def test_each_view_draws_from_its_own_settings(mode: str, expected: list[tuple[float, ...]]) -> None:
    measured = _rates(mode)
    assert len(measured) == len(expected)
    for stage, (got, want) in enumerate(zip(measured, expected)):
        assert all(_close(g, w) for g, w in zip(got, want)), (stage, got, want)


def test_without_views_both_views_share_the_settings() -> None:
    augment = AugmentConfig()
    assert augment.view(0) is augment and augment.view(1) is augment
    second = AugmentConfig(blur={"sigma": [0.5, 1.0]}, views=[{}, {"blur": {"p": 0.1}}]).view(1).blur
    assert (second.p, second.sigma) == (0.1, (0.5, 1.0))  # unset keys stay shared


@pytest.mark.parametrize("name", ["byol_hicl", "barlow_twins_baseline", "paper/byol_resnet50_224px",
                                  "imagenet100/barlow_twins_add_one", "imagenet1k/byol_off"])
def test_byol_and_barlow_manifests_use_the_papers_asymmetric_recipe(name: str) -> None:
    augment = load_manifest(MANIFESTS / f"{name}.yaml").augment
    assert (augment.view(0).solarize.p, augment.view(1).solarize.p) == (0.0, 0.2)
    if augment.blur.p > 0:  # the 32 px manifests keep blur off, as the reference code
        assert (augment.view(0).blur.p, augment.view(1).blur.p) == (1.0, 0.1)


def test_simsiam_stays_symmetric() -> None:
    assert load_manifest(MANIFESTS / "simsiam_hicl.yaml").augment.views == []
