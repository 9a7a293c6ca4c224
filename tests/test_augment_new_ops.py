"""The ops SSL recipes add to the paper's: posterize, equalize, sharpness, erasing, gaussian noise.

Each applier is compared sample by sample with torchvision.transforms.v2.functional on the same
parameters; erasing's sampler with torchvision's `RandomErasing` (two-sample Kolmogorov-Smirnov);
every op is probeable and embeddable, and identity parameters leave images unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF

from hicl.augment import Pipeline, identity_params, param_vector_dim, param_vectors
from hicl.augment.op import OPS, ApplyContext
from hicl.augment.ops.erasing import sample_erasing
from hicl.evaluate.invariance import probe_ops
from hicl.manifest import AugmentConfig

NEW_OPS = ["sharpness", "posterize", "equalize", "gaussian_noise", "erasing"]
N = 4000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 12, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=_gen(7))


def _apply(op: str, images: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    record, section, ctx = OPS[op], getattr(cfg, op), ApplyContext(images.shape[-1])
    params = record.sample(len(images), images.shape[-2:], section, _gen(1), ctx)
    return record.apply(images, params, section, ctx), params


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """sup |F_a - F_b| of the two empirical distribution functions."""
    values = torch.cat([a, b]).double().unique()
    fa = torch.searchsorted(a.double().sort().values, values, right=True) / len(a)
    fb = torch.searchsorted(b.double().sort().values, values, right=True) / len(b)
    return (fa - fb).abs().max().item()


def ks_bound(n: int, m: int, alpha: float = 1e-3) -> float:
    """The two-sample KS critical value c(alpha) sqrt((n + m) / (n m)), c = sqrt(-ln(alpha / 2) / 2)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def test_posterize_matches_torchvision() -> None:
    images, cfg = _images(), AugmentConfig(posterize={"p": 0.5, "bits": 3})
    out, params = _apply("posterize", images, cfg)
    assert params["posterize"].any() and not params["posterize"].all()
    for i in range(len(images)):
        expected = TF.posterize(images[i], 3) if params["posterize"][i] else images[i]
        torch.testing.assert_close(out[i], expected)


def test_equalize_matches_torchvision() -> None:
    images = _images() * 0.5 + 0.2  # a narrow histogram, so that equalising changes it
    out, params = _apply("equalize", images, AugmentConfig(equalize={"p": 0.5}))
    assert params["equalize"].any() and not params["equalize"].all()
    for i in range(len(images)):
        expected = TF.equalize(images[i]) if params["equalize"][i] else images[i]
        torch.testing.assert_close(out[i], expected)


def test_sharpness_matches_torchvision_with_each_samples_factor() -> None:
    images = _images()
    out, params = _apply("sharpness", images, AugmentConfig(sharpness={"p": 0.7, "factor": [0.0, 3.0]}))
    factor = params["sharpness_factor"]
    assert (factor != 1).any() and (factor == 1).any() and factor.min() >= 0 and factor.max() <= 3
    for i in range(len(images)):
        torch.testing.assert_close(out[i], TF.adjust_sharpness(images[i], float(factor[i])), rtol=1e-5, atol=1e-6)


def test_erasing_matches_torchvision_erase() -> None:
    images = _images()
    out, params = _apply("erasing", images, AugmentConfig(erasing={"p": 0.5, "value": 0.25}))
    boxes = (params["erase_box"] * 16).round().long()
    assert (boxes[:, 2] > 0).any() and (boxes[:, 2] == 0).any()
    for i in range(len(images)):
        top, left, h, w = boxes[i].tolist()
        torch.testing.assert_close(out[i], TF.erase(images[i], top, left, h, w, torch.tensor(0.25)))


def test_erasing_boxes_follow_torchvision_random_erasing() -> None:
    size, cfg = 16, AugmentConfig().erasing.model_copy(update={"p": 1.0})
    ours = (sample_erasing(N, size, cfg, _gen()) * size).round()
    torch.manual_seed(0)
    eraser = v2.RandomErasing(p=1.0, scale=cfg.scale, ratio=cfg.ratio, value=0)
    image = torch.zeros(3, size, size)
    theirs = torch.tensor([[p["i"], p["j"], p["h"], p["w"]] for p in (eraser.make_params([image]) for _ in range(N))])
    # torchvision returns the whole image (erasing nothing) when no attempt fits; hicl returns zeros
    theirs[(theirs[:, 2] == size) & (theirs[:, 3] == size)] = 0
    for column, name in enumerate(("top", "left", "height", "width")):
        assert ks_statistic(ours[:, column], theirs[:, column].double()) < ks_bound(N, N), name


def test_gaussian_noise_matches_torchvision_on_the_same_noise() -> None:
    images = _images()
    out, params = _apply("gaussian_noise", images, AugmentConfig(gaussian_noise={"p": 1.0, "sigma": [0.2, 0.2]}))
    torch.manual_seed(int(params["noise_seed"][0]))  # the CPU default generator draws what a seeded one draws
    torch.testing.assert_close(out, TF.gaussian_noise(images, mean=0.0, sigma=0.2, clip=True))


@pytest.mark.parametrize("op", ["posterize", "equalize", "gaussian_noise"])
def test_coin_rates_match_p(op: str) -> None:
    cfg = getattr(AugmentConfig(), op).model_copy(update={"p": 0.3})
    params = OPS[op].sample(N, (16, 16), cfg, _gen(), ApplyContext(16))
    applied = params[OPS[op].params[0].key]
    rate = (applied > 0).double().mean().item() if applied.is_floating_point() else applied.double().mean().item()
    assert abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / N)


def test_new_ops_are_identity_at_identity_params_probeable_and_embeddable() -> None:
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=_gen())
    cfg = AugmentConfig(ops=NEW_OPS)
    plain = Pipeline([], cfg, 16).apply(images, identity_params(6, (16, 16), "cpu"))
    torch.testing.assert_close(Pipeline(NEW_OPS, cfg, 16).apply(images, identity_params(6, (16, 16), "cpu")), plain)
    views, params = Pipeline(NEW_OPS, cfg, 16)(images, _gen(3))
    assert views.shape == (6, 3, 16, 16) and torch.isfinite(views).all()
    vectors = param_vectors(params, NEW_OPS, cfg, (16, 16))
    assert vectors.shape == (6, param_vector_dim(NEW_OPS)) == (6, 2 + 1 + 1 + 2 + 4)
    assert not param_vectors(identity_params(6, (16, 16), "cpu"), NEW_OPS, cfg, (16, 16)).any()
    assert set(NEW_OPS) <= set(probe_ops())


def _tv_params(transform: v2.Transform, image: torch.Tensor, n: int) -> list[dict]:
    torch.manual_seed(0)
    return [transform.make_params([image]) for _ in range(n)]


def test_paper_op_samplers_follow_torchvision_kolmogorov_smirnov() -> None:
    """crop boxes, colour factors and blur sigma against the v2 transforms' own `make_params`."""
    cfg, image = AugmentConfig(), torch.zeros(3, 12, 36)
    crop = OPS["crop"].sample(N, (12, 36), cfg.crop, _gen(), ApplyContext(16))["crop_box"]
    theirs = _tv_params(v2.RandomResizedCrop(16, scale=cfg.crop.scale, ratio=cfg.crop.ratio), image, N)
    for column, key in enumerate(("top", "left", "height", "width")):
        assert ks_statistic(crop[:, column], torch.tensor([p[key] for p in theirs])) < ks_bound(N, N), key
    jitter = cfg.color_jitter.model_copy(update={"p": 1.0})
    factors = OPS["color_jitter"].sample(N, (12, 36), jitter, _gen(), ApplyContext(16))["color_factors"]
    theirs = _tv_params(v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue), image, N)
    for column, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
        assert ks_statistic(factors[:, column], torch.tensor([p[key] for p in theirs])) < ks_bound(N, N), key
    blur = cfg.blur.model_copy(update={"p": 1.0})
    sigma = OPS["blur"].sample(N, (12, 36), blur, _gen(), ApplyContext(16))["blur_sigma"]
    theirs = _tv_params(v2.GaussianBlur(3, sigma=blur.sigma), image, N)
    assert ks_statistic(sigma, torch.tensor([p["sigma"][0] for p in theirs])) < ks_bound(N, N)
