"""The invariance probe on feature extractors whose invariances are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from hicl.data.loader import load_split
from hicl.evaluate.invariance import mean_ci95, probe_invariance, quantile_bins, whitened_cosine, whitening
from hicl.data.synthetic import SyntheticConfig, SyntheticSource
from hicl.manifest import AugmentConfig

AUGMENT = AugmentConfig()
MEAN = torch.tensor(AUGMENT.normalize.mean).view(1, 3, 1, 1)
STD = torch.tensor(AUGMENT.normalize.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = SyntheticSource(image_size=16, synthetic=SyntheticConfig(num_train=8, num_test=384))
    return load_split(data, "test").images


def pixels(views: torch.Tensor) -> torch.Tensor:
    return views * STD + MEAN  # back to [0, 1]


# A fixed random 2-layer conv net: sensitive to nearly everything.
_CONV = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1))
torch.nn.init.normal_(_CONV[0].weight, generator=torch.Generator().manual_seed(0))
torch.nn.init.normal_(_CONV[2].weight, generator=torch.Generator().manual_seed(1))


def conv_features(views: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.adaptive_avg_pool2d(_CONV(views), 2).flatten(1)


def flip_invariant(views: torch.Tensor) -> dict[str, torch.Tensor]:
    # a + b == b + a exactly in floating point, so a flipped image gives bit-identical features
    return {"s": conv_features(views) + conv_features(views.flip(-1)), "plain": conv_features(views)}


def brightness_only(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """A function of the mean brightness m alone: m, log m and Fourier features of m."""
    m = pixels(views).mean(dim=(1, 2, 3)).clamp_min(1e-3).unsqueeze(1)
    k = torch.arange(1, 9).float()
    return {"s": torch.cat((m, m.log(), torch.cos(2 * math.pi * k * m), torch.sin(2 * math.pi * k * m)), dim=1)}


def random_features(views: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"s": torch.randn(len(views), 32, generator=torch.Generator().manual_seed(int(views.abs().sum() * 1e3)))}


def test_flip_invariant_extractor_is_fully_flip_invariant_and_flip_unpredictable(images):
    result = probe_invariance(flip_invariant, images, AUGMENT, 16, ops=["flip", "hue"], seed=0)
    flip = result.cell("s", "flip")
    assert flip.invariance == pytest.approx(1.0, abs=1e-4)
    assert flip.invariance_n == pytest.approx(len(images) / 2, rel=0.2)
    assert abs(flip.over_chance) < 0.1
    assert flip.classes == 2
    # the same network without the symmetrisation is not flip-invariant
    assert result.cell("plain", "flip").invariance < 0.95
    assert result.cell("s", "hue").invariance < 0.99


def test_brightness_extractor_predicts_brightness_and_is_not_invariant_to_it(images):
    result = probe_invariance(brightness_only, images, AUGMENT, 16, ops=["brightness", "flip"], seed=0)
    brightness = result.cell("s", "brightness")
    assert brightness.classes == 10
    assert 0.05 < brightness.chance < 0.16
    assert brightness.over_chance > 0.25
    assert brightness.invariance < 0.5
    # flip leaves the mean brightness unchanged: fully invariant, nothing to predict
    assert result.cell("s", "flip").invariance == pytest.approx(1.0, abs=1e-3)
    assert abs(result.cell("s", "flip").over_chance) < 0.1


def test_random_features_are_not_invariant(images):
    result = probe_invariance(random_features, images, AUGMENT, 16, ops=["crop", "grayscale"], seed=0)
    for cell in result.cells:
        assert abs(cell.invariance) < 0.06
        assert abs(cell.invariance) < 3 * cell.invariance_ci95
        assert abs(cell.unrelated) < 0.06
        assert abs(cell.over_chance) < 0.1


def test_zero_strength_ops_are_skipped(images):
    augment = AugmentConfig(color_jitter={"hue": 0.0})
    result = probe_invariance(random_features, images[:32], augment, 16, ops=["hue", "flip"])
    assert result.ops == ["flip"] and result.skipped == ["hue"]


def test_whitened_cosine_is_invariant_to_an_invertible_linear_map_of_the_features():
    # with no shrinkage, whitening undoes any invertible linear map A: cos(W(Ax - A mu), ...) is the same
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 6, generator=g), torch.randn(500, 6, generator=g)
    a = torch.randn(6, 6, generator=g) + 3 * torch.eye(6)
    plain = whitened_cosine(x, y, *whitening(x, shrinkage=0.0))
    mapped = whitened_cosine(x @ a.T, y @ a.T, *whitening(x @ a.T, shrinkage=0.0))
    torch.testing.assert_close(plain, mapped, atol=1e-4, rtol=1e-4)
    # closed form: cos(L^-1 (x - mu), L^-1 (y - mu)) with S = L L^T (W differs from L^-1 by a rotation)
    mu, cov = x.double().mean(0), torch.cov(x.double().T)
    inv_l = torch.linalg.inv(torch.linalg.cholesky(cov))
    expected = torch.nn.functional.cosine_similarity((x - mu) @ inv_l.T, (y - mu) @ inv_l.T, dim=1)
    torch.testing.assert_close(plain.double(), expected, atol=1e-4, rtol=1e-4)


def test_quantile_bins_are_equal_count_and_ci_matches_the_normal_formula():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(quantile_bins(values)).tolist() == [100] * 10
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, half = mean_ci95(v)
    assert mean == 2.5
    assert half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-3)


def test_the_probe_table_fits_80_columns_with_every_op_and_stage(images):
    from types import SimpleNamespace

    from rich.console import Console

    from hicl.evaluate.invariance import probe_ops
    from hicl.evaluate.probe_report import ProbedTarget, render_difference, render_probe

    def five_stages(views):
        return {f"layer{k}": conv_features(views) * k for k in range(1, 6)}

    result = probe_invariance(five_stages, images[:64], AUGMENT, 16, seed=0)
    assert result.ops == list(probe_ops()) and len(result.stages) == 5
    probed = ProbedTarget(SimpleNamespace(label="run"), result, {})
    console = Console(width=80, record=True)
    console.print(render_probe(probed))
    console.print(render_difference(probed, probed))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│") and line.split("│")[1].strip()]
    assert rows[: len(result.ops)] == result.ops  # one row per op, names unbroken
    cell = result.cell("layer3", result.ops[0])
    assert f"{cell.invariance:.2f}±{cell.invariance_ci95:.2f}" in text


def test_the_probe_reports_each_stages_effective_rank_of_the_clean_features(images):
    import numpy as np

    def stages(views):
        flat = conv_features(views)
        return {"full": flat, "rank_one": flat[:, :1] * torch.ones(1, 16)}

    result = probe_invariance(stages, images[:64], AUGMENT, 16, ops=["flip"], seed=0)
    assert result.effective_rank["rank_one"] == pytest.approx(1.0, abs=1e-3)
    clean = stages(pixels_to_views(images[:64]))["full"].double().numpy()
    s = np.linalg.svd(clean, compute_uv=False)
    p = s / s.sum()
    assert result.effective_rank["full"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-3)


def pixels_to_views(images: torch.Tensor) -> torch.Tensor:
    """The probe's clean views of uint8 images already at the view size: scaled to [0, 1], normalised."""
    return (images.float() / 255 - MEAN) / STD
