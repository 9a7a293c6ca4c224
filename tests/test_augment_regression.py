"""Augmentation output pinned to a recorded reference: same seed, same views, params and embedding vectors.

`tests/data/augment_before_registry.safetensors` holds what the augmentation code of commit c1d916d made
from fixed uint8 images (full-size and padded sources, every op, all four hierarchy modes, both
parameter encodings). Any restructuring of the augmentation module must keep existing manifests'
meaning: integer and boolean parameters equal, float tensors within tolerances that hold on any CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hicl.augment.hierarchy import StageAugmenter
from hicl.augment.pipeline import Pipeline, param_vectors
from hicl.manifest import AugmentConfig, HierarchyConfig

RECORDED = load_file(Path(__file__).parent / "data" / "augment_before_registry.safetensors")
RECORDED_OPS = ["crop", "flip", "rotation", "color_jitter", "grayscale", "blur", "solarize"]  # canonical order
ALL_OPS = ["crop", "color_jitter", "grayscale", "blur", "flip", "rotation", "solarize"]
EMBEDDED = ["color_jitter", "crop", "blur", "rotation", "flip"]


def _same(prefix: str, produced: dict[str, torch.Tensor]) -> None:
    """Every recorded tensor of `prefix` equals the produced one (ops added since have keys of their own)."""
    recorded = {key.removeprefix(f"{prefix}."): value for key, value in RECORDED.items() if key.startswith(f"{prefix}.")}
    assert recorded, prefix
    for key, expected in recorded.items():
        value = produced[key]
        assert value.dtype == expected.dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=key)
        else:
            assert torch.equal(value, expected), key


@pytest.mark.parametrize("case", ["full", "padded"])
def test_pipeline_matches_the_recorded_views_params_and_vectors(case: str) -> None:
    sizes = RECORDED["sizes"] if case == "padded" else None
    cfg = AugmentConfig(ops=RECORDED_OPS)
    views, params = Pipeline(RECORDED_OPS, cfg, 16)(RECORDED["images"], torch.Generator().manual_seed(3), sizes)
    hw = (20, 24) if sizes is None else sizes
    vectors = {f"vec.{enc}": param_vectors(params, RECORDED_OPS, cfg, hw, enc) for enc in ("reference", "normalized")}
    _same(f"pipeline.{case}", {"views": views, **params, **vectors})


@pytest.mark.parametrize("mode", ["off", "add_one", "uniform", "strength"])
def test_stage_views_match_the_recorded_ones(mode: str) -> None:
    hierarchy = HierarchyConfig(mode=mode, embeddings={"ops": EMBEDDED})
    stage_views = StageAugmenter(hierarchy, AugmentConfig(ops=ALL_OPS), 16)(
        RECORDED["images"], torch.Generator().manual_seed(7), RECORDED["sizes"]
    )
    for stage, (views, params, vector) in enumerate(
        zip(stage_views.views, stage_views.params, stage_views.param_vectors)
    ):
        produced = {"views": views, **params}
        if vector is not None:
            produced["vec"] = vector
        _same(f"{mode}.{stage}", produced)
    assert f"{mode}.{len(stage_views.views)}.views" not in RECORDED
