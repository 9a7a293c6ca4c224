"""Tests for the hierarchy schedules (`hicl.augment.hierarchy`) and their manifest validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from hicl.augment.hierarchy import StageAugmenter, embedded_stages, stage_configs, stage_ops, weakened
from hicl.errors import HiclError
from hicl.augment.op import op_names
from hicl.manifest import AugmentConfig, HierarchyConfig, manifest_from_dict

ALL_PARAM_KEYS = {
    "crop_box", "flip", "rotation_k", "color_factors", "color_order", "color_applied", "grayscale",
    "blur_sigma", "solarize",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _canonical(ops: set[str]) -> list[str]:
    return sorted(ops, key=op_names().index)


# ------------------------------------------------------------------------------------------ stage_ops
def test_add_one_default_groups_add_one_group_per_stage():
    ops = stage_ops(HierarchyConfig(mode="add_one"), AugmentConfig())
    # the paper's A_1..A_4, written in the canonical order crop, flip, rotation, color_jitter, grayscale, blur
    assert ops == [
        ["crop", "color_jitter"],
        ["crop", "color_jitter", "grayscale"],
        ["crop", "color_jitter", "grayscale", "blur"],
        ["crop", "flip", "color_jitter", "grayscale", "blur"],
    ]
    for stage in ops:
        assert stage == _canonical(set(stage))


def test_add_one_custom_groups_are_cumulative_unions_in_canonical_order():
    groups = [["solarize", "flip"], ["crop"], ["rotation", "blur"]]
    ops = stage_ops(HierarchyConfig(mode="add_one", groups=groups), AugmentConfig())
    union: set[str] = set()
    assert len(ops) == 3
    for k, group in enumerate(groups):
        union |= set(group)
        assert ops[k] == _canonical(union)
    assert ops[0] == ["flip", "solarize"]


@pytest.mark.parametrize("mode", ["uniform", "strength"])
def test_uniform_and_strength_give_the_full_pipeline_at_every_stage(mode):
    augment = AugmentConfig(ops=["blur", "crop", "rotation"])
    ops = stage_ops(HierarchyConfig(mode=mode), augment)
    assert ops == [["crop", "rotation", "blur"]] * 4
    three = stage_ops(HierarchyConfig(mode=mode, groups=[["crop"], ["flip"], ["blur"]]), augment)
    assert len(three) == 3


def test_off_gives_one_stage_with_the_full_pipeline():
    augment = AugmentConfig()
    assert stage_ops(HierarchyConfig(mode="off"), augment) == [_canonical(set(augment.ops))]
    assert len(stage_configs(HierarchyConfig(mode="off"), augment)) == 1


# ------------------------------------------------------------------------------------- StageAugmenter
@pytest.fixture(scope="module")
def add_one_params() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    augmenter = StageAugmenter(HierarchyConfig(mode="add_one"), AugmentConfig(), view_size=32)
    batch = augmenter(images, torch.Generator().manual_seed(1))
    assert len(batch.views) == 4
    for view in batch.views:
        assert view.shape == (128, 3, 32, 32)  # [view a; view b]
    return batch.params


def _drawn(params: dict[str, torch.Tensor]) -> dict[str, bool]:
    """For each op, whether any sample has a non-identity parameter (checked independently of hicl)."""
    n = params["flip"].shape[0]
    full_box = torch.tensor([0, 0, 32, 32]).expand(n, 4)
    return {
        "crop": bool((params["crop_box"] != full_box).any()),
        "flip": bool(params["flip"].any()),
        "rotation": bool((params["rotation_k"] != 0).any()),
        "color_jitter": bool(
            (params["color_factors"] != torch.tensor([1.0, 1.0, 1.0, 0.0])).any() or params["color_applied"].any()
        ),
        "grayscale": bool(params["grayscale"].any()),
        "blur": bool((params["blur_sigma"] != 0).any()),
        "solarize": bool(params["solarize"].any()),
    }


def test_stage_augmenter_draws_exactly_the_ops_of_each_stage(add_one_params):
    expected = [
        {"crop", "color_jitter"},
        {"crop", "color_jitter", "grayscale"},
        {"crop", "color_jitter", "grayscale", "blur"},
        {"crop", "color_jitter", "grayscale", "blur", "flip"},
    ]
    for k, params in enumerate(add_one_params):
        assert ALL_PARAM_KEYS <= set(params)  # and the keys of the ops added since
        drawn = _drawn(params)
        # with 128 views per stage and p >= 0.2, an op of A_k that is never drawn has probability < 1e-12
        assert {op for op, d in drawn.items() if d} == expected[k], f"stage {k + 1}"


def test_stage_augmenter_ops_outside_a_stage_keep_identity_params(add_one_params):
    n = 128
    for k, params in enumerate(add_one_params):
        assert not (params["rotation_k"] != 0).any()
        assert not params["solarize"].any()
        if k < 3:
            assert not params["flip"].any(), f"flip at stage {k + 1}"
        if k < 2:
            assert torch.equal(params["blur_sigma"], torch.zeros(n))
        if k < 1:
            assert not params["grayscale"].any()
    # colour factors: non-identity at every stage, and identity exactly where jitter was not applied
    for params in add_one_params:
        applied = params["color_applied"]
        assert 0 < int(applied.sum()) < n
        assert torch.equal(params["color_factors"][~applied], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(int((~applied).sum()), 4))
        assert (params["color_factors"][applied] != torch.tensor([1.0, 1.0, 1.0, 0.0])).all(dim=1).all()
    # flips really happen at stage 4 (p = 0.5): some but not all
    assert 0 < int(add_one_params[3]["flip"].sum()) < n


def test_stage_augmenter_param_vectors_only_at_embedded_stages():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    augment = AugmentConfig()
    hierarchy = HierarchyConfig(mode="add_one", embeddings={"encoding": "normalized"})
    augmenter = StageAugmenter(hierarchy, augment, view_size=32)
    assert augmenter.embed_dim == 4
    batch = augmenter(images, torch.Generator().manual_seed(4))
    assert batch.param_vectors[0] is None
    cj = augment.color_jitter
    spans = [cj.brightness, cj.contrast, cj.saturation, cj.hue]
    for k in (1, 2, 3):
        vec = batch.param_vectors[k]
        assert vec.shape == (16, 4)
        factors = batch.params[k]["color_factors"]
        for i in range(16):
            for j, (identity, span) in enumerate(zip((1.0, 1.0, 1.0, 0.0), spans)):
                assert vec[i, j].item() == pytest.approx((factors[i, j].item() - identity) / span, abs=1e-5)


# -------------------------------------------------------------------------------------------- weakened
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_weakened_steps(levels):
    base = AugmentConfig()
    weak = weakened(base, levels)
    for op in ("flip", "rotation", "grayscale", "blur", "solarize"):
        expected = max(0.0, getattr(base, op).p - 0.05 * levels)
        assert getattr(weak, op).p == pytest.approx(expected), op
    for factor in ("brightness", "contrast", "saturation", "hue"):
        expected = max(0.0, getattr(base.color_jitter, factor) - 0.02 * levels)
        assert getattr(weak.color_jitter, factor) == pytest.approx(expected), factor
    assert weak.crop.scale[0] == pytest.approx(min(base.crop.scale[1], base.crop.scale[0] + 0.1 * levels))
    assert weak.crop.scale[1] == base.crop.scale[1]
    # untouched: the colour-jitter probability (only the five coin-flip ops are lowered), ops, sizes
    assert weak.color_jitter.p == base.color_jitter.p
    assert weak.ops == base.ops and weak.crop.ratio == base.crop.ratio and weak.blur.sigma == base.blur.sigma
    # the input is not modified
    assert base == AugmentConfig()


def test_weakened_concrete_values_and_clamping():
    base = AugmentConfig(
        flip={"p": 0.5}, grayscale={"p": 0.12}, color_jitter={"hue": 0.05, "brightness": 0.4}, crop={"scale": (0.5, 0.7)}
    )
    weak = weakened(base, 2)
    assert weak.flip.p == pytest.approx(0.4)
    assert weak.grayscale.p == pytest.approx(0.02)
    assert weak.color_jitter.brightness == pytest.approx(0.36)
    assert weak.color_jitter.hue == pytest.approx(0.01)
    assert weak.crop.scale == pytest.approx((0.7, 0.7))  # 0.5 + 0.2 = 0.7 = max
    very = weakened(base, 5)
    assert very.grayscale.p == 0.0 and very.solarize.p == 0.0  # 0.12 - 0.25, 0.2 - 0.25 clamp at 0
    assert very.color_jitter.hue == 0.0  # 0.05 - 0.1 clamps at 0
    assert very.color_jitter.brightness == pytest.approx(0.3)
    assert very.crop.scale == pytest.approx((0.7, 0.7))  # clamped at the max, not 1.0
    assert weakened(base, 0) == base


def test_strength_stage_configs_weaken_shallow_stages():
    augment = AugmentConfig()
    configs = stage_configs(HierarchyConfig(mode="strength"), augment)
    assert len(configs) == 4
    assert configs[-1] == augment
    for k, cfg in enumerate(configs):
        levels = 3 - k
        assert cfg.flip.p == pytest.approx(max(0.0, augment.flip.p - 0.05 * levels))
        assert cfg.color_jitter.contrast == pytest.approx(augment.color_jitter.contrast - 0.02 * levels)
        assert cfg.crop.scale[0] == pytest.approx(augment.crop.scale[0] + 0.1 * levels)
    assert configs[0].blur.p == pytest.approx(0.5 - 0.15)
    # the other schedules use the config unchanged at every stage
    assert stage_configs(HierarchyConfig(mode="add_one"), augment) == [augment] * 4
    assert stage_configs(HierarchyConfig(mode="uniform"), augment) == [augment] * 4


def test_strength_augmenter_uses_weaker_config_at_shallow_stages():
    augmenter = StageAugmenter(HierarchyConfig(mode="strength"), AugmentConfig(), view_size=32)
    assert augmenter.pipelines[0][0].cfg.crop.scale[0] == pytest.approx(0.5)
    assert augmenter.pipelines[3][0].cfg == augmenter.pipelines[3][1].cfg == AugmentConfig()


# ----------------------------------------------------------------------------------- embedded_stages
def test_embedded_stages():
    assert embedded_stages(HierarchyConfig(mode="add_one")) == [1, 2, 3]
    assert embedded_stages(HierarchyConfig(mode="add_one", groups=[["crop"], ["flip"]])) == [1]
    assert embedded_stages(HierarchyConfig(mode="add_one", embeddings={"stages": [1, 4]})) == [0, 3]
    assert embedded_stages(HierarchyConfig(mode="add_one", embeddings={"stages": [4, 2]})) == [1, 3]
    assert embedded_stages(HierarchyConfig(mode="add_one", embeddings={"ops": []})) == []
    assert embedded_stages(HierarchyConfig(mode="add_one", embeddings={"ops": [], "stages": [2]})) == []
    assert embedded_stages(HierarchyConfig(mode="off")) == []


# ------------------------------------------------------------------------------------ manifest checks
def test_add_one_groups_stages_mismatch_is_a_clear_error():
    raw = {
        "name": "t",
        "hierarchy": {"mode": "add_one", "stages": ["layer2", "layer3", "layer4"]},  # 4 default groups
    }
    with pytest.raises(HiclError) as info:
        manifest_from_dict(raw, "m.yaml")
    msg = str(info.value)
    assert msg.startswith("m.yaml: ")
    assert "hierarchy" in msg and "4 groups" in msg and "3 stages" in msg
    with pytest.raises(ValidationError, match="one group per tapped stage"):
        HierarchyConfig(mode="add_one", stages=["layer2", "layer3", "layer4"])
    # uniform/strength take any number of stages; the same stages with 3 groups are fine for add_one
    assert manifest_from_dict({"name": "t", "hierarchy": {"mode": "uniform", "stages": ["layer3", "layer4"]}})
    ok = manifest_from_dict(
        {"name": "t", "hierarchy": {"mode": "add_one", "groups": [["crop"], ["flip"], ["blur"]],
                                    "stages": ["layer2", "layer3", "layer4"]}}
    )
    assert ok.hierarchy.num_stages == 3


def test_other_hierarchy_inconsistencies_are_errors():
    with pytest.raises(HiclError, match="loss_weights has 2 entries for 4 stages"):
        manifest_from_dict({"name": "t", "hierarchy": {"mode": "add_one", "loss_weights": [1, 2]}})
    with pytest.raises(HiclError, match="embeddings.stages names stage 5 of 4"):
        manifest_from_dict({"name": "t", "hierarchy": {"mode": "add_one", "embeddings": {"stages": [5]}}})
    with pytest.raises(HiclError, match="unknown augmentation op 'sharpen'"):
        manifest_from_dict({"name": "t", "hierarchy": {"groups": [["crop"], ["sharpen"]]}})
    with pytest.raises(HiclError, match="listed twice"):
        manifest_from_dict({"name": "t", "hierarchy": {"groups": [["crop"], ["crop"]]}})
    with pytest.raises(HiclError, match="non-empty"):
        manifest_from_dict({"name": "t", "hierarchy": {"groups": [["crop"], []]}})
