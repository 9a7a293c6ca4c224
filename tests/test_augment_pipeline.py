"""The augmentation pipeline: parameter distributions, identity params, determinism, param vectors, dtypes.

Rates are checked against a binomial bound of 5 standard deviations, sqrt(p (1 - p) / n), so a correct
sampler fails about once in 10^6 runs (and the seeds are fixed, so not at all), while a wrong p or range by
a few percent fails.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2.functional as TF

from hicl.augment import Pipeline, identity_params, param_vector_dim, param_vectors
from hicl.augment import ops as A
from hicl.augment.op import OPS, op_names
from hicl.manifest import AugmentConfig, BlurConfig, ColorJitterConfig, CropConfig, FlipConfig, RotationConfig

# the ops of the paper's pipelines, which `_tv_views` reproduces with torchvision
OP_NAMES = ("crop", "flip", "rotation", "color_jitter", "grayscale", "blur", "solarize")

N = 20_000
PARAM_KEYS = {
    "crop_box": (torch.int64, (4,)),
    "flip": (torch.bool, ()),
    "rotation_k": (torch.int64, ()),
    "color_factors": (torch.float32, (4,)),
    "color_order": (torch.int64, (4,)),
    "color_applied": (torch.bool, ()),
    "grayscale": (torch.bool, ()),
    "blur_sigma": (torch.float32, ()),
    "solarize": (torch.bool, ()),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    n = mask.numel()
    bound = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert abs(mask.float().mean().item() - p) <= bound, (mask.float().mean().item(), p, bound)


def _uint8_batch(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=_gen(seed))


# ------------------------------------------------------------------------------------ distributions
def test_crop_area_and_aspect_lie_in_the_configured_ranges() -> None:
    cfg = CropConfig()
    boxes = A.sample_crop(N, (1000, 1000), cfg, _gen())
    _, _, h, w = boxes.double().unbind(1)
    fallback = (boxes == torch.tensor([0, 0, 1000, 1000])).all(1)
    h, w = h[~fallback], w[~fallback]
    # w, h are rounded to pixels: >= 387 px here, so area and aspect move by < 0.3% through rounding
    area, aspect = h * w / 1e6, w / h
    assert area.min() >= cfg.scale[0] * 0.997 and area.max() <= cfg.scale[1] * 1.003
    assert aspect.min() >= cfg.ratio[0] * 0.997 and aspect.max() <= cfg.ratio[1] * 1.003
    # and the draws reach the ends of the ranges
    assert area.min() < cfg.scale[0] * 1.01 and aspect.min() < cfg.ratio[0] * 1.01
    assert aspect.max() > cfg.ratio[1] * 0.99


def test_crop_area_is_uniform_and_log_aspect_uniform_when_every_attempt_fits() -> None:
    boxes = A.sample_crop(N, (1000, 1000), CropConfig(scale=(0.1, 0.3), ratio=(0.5, 2.0)), _gen())
    top, left, h, w = boxes.double().unbind(1)
    area, log_aspect = h * w / 1e6, (w / h).log()
    se = 5 / math.sqrt(12 * N)  # 5 standard errors of the mean of U(0, 1); 1e-3 more for pixel rounding
    assert abs(area.mean().item() - 0.2) < 0.2 * se + 1e-3
    assert abs((area < 0.15).double().mean().item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / N)
    assert abs(log_aspect.mean().item()) < 2 * math.log(2) * se + 1e-3
    # offsets uniform over the valid positions
    assert abs((top / (1000 - h)).mean().item() - 0.5) < se + 1e-3
    assert abs((left / (1000 - w)).mean().item() - 0.5) < se + 1e-3


def test_crop_box_statistics_match_torchvision_get_params() -> None:
    """Rejection and fallback included: a small, wide image where many attempts do not fit."""
    height, width, cfg = 12, 36, CropConfig(scale=(0.2, 1.0), ratio=(0.75, 4 / 3))
    ours = A.sample_crop(N, (height, width), cfg, _gen()).double()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    n_tv = 4000
    theirs = torch.tensor(
        [T1.RandomResizedCrop.get_params(image, list(cfg.scale), list(cfg.ratio)) for _ in range(n_tv)]
    ).double()
    for column, name in enumerate(("top", "left", "height", "width")):
        a, b = ours[:, column], theirs[:, column]
        se = math.sqrt(a.var().item() / N + b.var().item() / n_tv)
        assert abs(a.mean().item() - b.mean().item()) < 5 * se, name


def test_coin_flip_rates() -> None:
    for p in (0.0, 0.2, 0.5, 1.0):
        _assert_rate(A.sample_flip(N, FlipConfig(p=p), _gen()), p)


def test_rotation_k_distribution() -> None:
    k = A.sample_rotation(N, RotationConfig(p=0.5), _gen())
    # k = 0 when not applied (1/2) or when applied and drawn 0 (1/2 * 1/4)
    for value, p in ((0, 0.625), (1, 0.125), (2, 0.125), (3, 0.125)):
        _assert_rate(k == value, p)


def test_color_jitter_rate_ranges_and_identity() -> None:
    cfg = ColorJitterConfig(p=0.8, brightness=0.4, contrast=1.5, saturation=0.0, hue=0.1)
    factors, order, applied = A.sample_color_jitter(N, cfg, _gen())
    _assert_rate(applied, 0.8)
    assert (factors[~applied] == torch.tensor(A.COLOR_IDENTITY)).all()
    assert (order[~applied] == torch.arange(4)).all()
    f = factors[applied]
    # contrast 1.5: the lower bound is max(0, 1 - 1.5) = 0; saturation 0: always exactly 1
    for column, (low, high) in enumerate(((0.6, 1.4), (0.0, 2.5), (1.0, 1.0), (-0.1, 0.1))):
        values = f[:, column]
        assert values.min() >= low and values.max() <= high
        assert values.min() - low < 0.01 * (high - low) + 1e-9 and high - values.max() < 0.01 * (high - low) + 1e-9
        assert abs(values.mean().item() - (low + high) / 2) <= 5 * (high - low) / math.sqrt(12 * len(values)) + 1e-9


def test_color_orders_are_uniform_over_the_24_permutations() -> None:
    _, order, applied = A.sample_color_jitter(N, ColorJitterConfig(p=0.8), _gen())
    orders = order[applied]
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for perm, count in zip(*torch.unique(orders, dim=0, return_counts=True)):
        counts[tuple(perm.tolist())] = count.item()
    assert len(counts) == 24
    p = 1 / 24
    bound = 5 * math.sqrt(p * (1 - p) / len(orders))
    assert all(abs(count / len(orders) - p) < bound for count in counts.values()), counts


def test_fixed_color_order() -> None:
    _, order, _ = A.sample_color_jitter(1000, ColorJitterConfig(order="fixed"), _gen())
    assert (order == torch.arange(4)).all()


def test_blur_sigma_range_and_rate() -> None:
    sigma = A.sample_blur(N, BlurConfig(p=0.5, sigma=(0.1, 2.0)), _gen())
    applied = sigma > 0
    _assert_rate(applied, 0.5)
    s = sigma[applied]
    assert s.min() >= 0.1 and s.max() <= 2.0 and s.min() < 0.12 and s.max() > 1.98
    assert abs(s.mean().item() - 1.05) < 5 * 1.9 / math.sqrt(12 * len(s))


# --------------------------------------------------------------------------------------- the pipeline
def test_params_have_every_key_shape_and_dtype_whatever_the_ops() -> None:
    """The keys of every registered op (each as its ParamSpec says); the paper's ops' keys as they always were."""
    images = _uint8_batch(5, 20, 24)
    specs = {spec.key: spec for op in OPS.values() for spec in op.params}
    every_op = [op for op in op_names() if op in AugmentConfig.model_fields]
    for ops in ([], ["flip"], list(OP_NAMES), every_op):
        _, params = Pipeline(ops, AugmentConfig(), 16)(images, _gen())
        assert set(params) == set(specs) and set(PARAM_KEYS) <= set(params)
        for key, spec in specs.items():
            assert params[key].dtype == getattr(torch, spec.dtype) and params[key].shape == (5, *spec.shape), key
        for key, (dtype, tail) in PARAM_KEYS.items():
            assert params[key].dtype == dtype and params[key].shape == (5, *tail), key


def test_ops_not_in_the_pipeline_keep_identity_params() -> None:
    images = _uint8_batch(64, 20, 24)
    _, params = Pipeline(["flip"], AugmentConfig(), 16)(images, _gen())
    identity = identity_params(64, (20, 24), "cpu")
    for key in PARAM_KEYS:
        if key != "flip":
            assert torch.equal(params[key], identity[key]), key
    assert params["flip"].any() and not params["flip"].all()


def test_flip_only_pipeline_leaves_colours_unchanged() -> None:
    cfg = AugmentConfig()
    images = _uint8_batch(32, 16, 16)
    views, params = Pipeline(["flip"], cfg, 16)(images, _gen())
    expected = TF.normalize(images.float() / 255, list(cfg.normalize.mean), list(cfg.normalize.std))
    expected = torch.where(params["flip"].view(-1, 1, 1, 1), expected.flip(-1), expected)
    torch.testing.assert_close(views, expected, rtol=0, atol=1e-5)


def test_pipeline_without_crop_resizes_the_whole_image() -> None:
    cfg = AugmentConfig()
    images = _uint8_batch(4, 20, 24)
    views, _ = Pipeline([], cfg, 16)(images, _gen())
    resized = TF.resize(images.float() / 255, [16, 16], antialias=False)
    torch.testing.assert_close(views, TF.normalize(resized, list(cfg.normalize.mean), list(cfg.normalize.std)),
                               rtol=0, atol=1e-4)


def _tv_views(images: torch.Tensor, params: dict[str, torch.Tensor], cfg: AugmentConfig, size: int) -> torch.Tensor:
    """Every op with torchvision, sample by sample, from the pipeline's params (in OP_NAMES order)."""
    tv_color = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    kernel = A.default_blur_kernel_size(size)
    views = []
    for i in range(len(images)):
        x = TF.to_dtype(images[i], torch.float32, scale=True)
        x = TF.resized_crop(x, *params["crop_box"][i].tolist(), [size, size], antialias=False)
        x = TF.horizontal_flip(x) if params["flip"][i] else x
        x = TF.rotate(x, 90.0 * params["rotation_k"][i].item())
        if params["color_applied"][i]:
            for op in params["color_order"][i].tolist():
                x = tv_color[op](x, params["color_factors"][i, op].item())
        x = TF.rgb_to_grayscale(x, num_output_channels=3) if params["grayscale"][i] else x
        sigma = params["blur_sigma"][i].item()
        x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma]) if sigma > 0 else x
        x = TF.solarize(x, cfg.solarize.threshold) if params["solarize"][i] else x
        views.append(TF.normalize(x, list(cfg.normalize.mean), list(cfg.normalize.std)))
    return torch.stack(views)


def test_full_pipeline_matches_torchvision_per_sample() -> None:
    cfg = AugmentConfig(rotation=RotationConfig(p=0.8), solarize={"p": 0.5})
    images = _uint8_batch(24, 30, 36)
    views, params = Pipeline(list(OP_NAMES), cfg, 16)(images, _gen(5))
    for key in ("flip", "color_applied", "grayscale", "solarize"):
        assert params[key].any() and not params[key].all(), key
    # 1e-5 in [0, 1] becomes up to 1e-5 / std = 4.5e-5 after normalisation
    torch.testing.assert_close(views, _tv_views(images, params, cfg, 16), rtol=0, atol=5e-5)


def test_op_listing_order_does_not_matter() -> None:
    images = _uint8_batch(8, 20, 24)
    a = Pipeline(["blur", "flip", "crop", "color_jitter"], AugmentConfig(), 16)(images, _gen(1))
    b = Pipeline(["crop", "flip", "color_jitter", "blur"], AugmentConfig(), 16)(images, _gen(1))
    assert torch.equal(a[0], b[0])


def test_same_seed_same_views_and_params_other_seed_differs() -> None:
    pipeline = Pipeline(list(OP_NAMES), AugmentConfig(), 16)
    images = _uint8_batch(16, 20, 24)
    views_a, params_a = pipeline(images, _gen(7))
    views_b, params_b = pipeline(images, _gen(7))
    views_c, params_c = pipeline(images, _gen(8))
    assert torch.equal(views_a, views_b)
    assert all(torch.equal(params_a[k], params_b[k]) for k in PARAM_KEYS)
    assert not torch.equal(views_a, views_c)
    assert not torch.equal(params_a["crop_box"], params_c["crop_box"])


def test_bfloat16_output() -> None:
    images = _uint8_batch(4, 20, 24)
    views32, _ = Pipeline(list(OP_NAMES), AugmentConfig(), 16)(images, _gen())
    views16, _ = Pipeline(list(OP_NAMES), AugmentConfig(), 16, out_dtype=torch.bfloat16)(images, _gen())
    assert views16.dtype == torch.bfloat16 and views16.shape == (4, 3, 16, 16)
    torch.testing.assert_close(views16.float(), views32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(("view_size", "kernel"), [(32, 3), (224, 23)])
def test_default_blur_kernel(view_size: int, kernel: int) -> None:
    """The pipeline blurs with 10% of the view (made odd) unless blur.kernel_size says otherwise."""
    images = _uint8_batch(2, view_size, view_size)
    x = images.float() / 255
    for cfg, k in ((AugmentConfig(blur={"p": 1.0}), kernel), (AugmentConfig(blur={"p": 1.0, "kernel_size": 5}), 5)):
        pipeline = Pipeline(["blur"], cfg, view_size)
        views, params = pipeline(images, _gen())
        expected = A.normalize(A.apply_blur(x, params["blur_sigma"], k), cfg.normalize.mean, cfg.normalize.std, torch.float32)
        torch.testing.assert_close(views, expected)


def test_rejects_unknown_ops_and_non_uint8_input() -> None:
    with pytest.raises(ValueError, match="unknown augmentation op 'jitter'"):
        Pipeline(["jitter"], AugmentConfig(), 16)
    with pytest.raises(ValueError, match="uint8"):
        Pipeline(["flip"], AugmentConfig(), 16)(torch.rand(2, 3, 16, 16), _gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_with_cpu_or_cuda_generator() -> None:
    pipeline = Pipeline(list(OP_NAMES), AugmentConfig(), 32)
    images = _uint8_batch(64, 36, 36)
    views_cpu, params_cpu = pipeline(images, _gen(3))
    views, params = pipeline(images.cuda(), _gen(3))
    assert views.is_cuda and all(p.is_cuda for p in params.values())
    assert all(torch.equal(params[k].cpu(), params_cpu[k]) for k in PARAM_KEYS)
    torch.testing.assert_close(views.cpu(), views_cpu, rtol=0, atol=1e-4)
    cuda_gen = torch.Generator(device="cuda").manual_seed(3)
    views, params = pipeline(images.cuda(), cuda_gen)
    assert views.is_cuda and all(p.is_cuda for p in params.values())


# ------------------------------------------------------------------------------------- param vectors
def test_param_vector_dims() -> None:
    assert param_vector_dim(OP_NAMES) == 4 + 1 + 2 + 4 + 1 + 2 + 1
    assert param_vector_dim(["color_jitter"]) == 4
    params = Pipeline(list(OP_NAMES), AugmentConfig(), 16)(_uint8_batch(6, 20, 24), _gen())[1]
    for ops in (list(OP_NAMES), ["blur", "crop"], []):
        assert param_vectors(params, ops, AugmentConfig(), (20, 24)).shape == (6, param_vector_dim(ops))


def test_identity_params_give_zero_colour_vectors() -> None:
    params = identity_params(3, (20, 24), "cpu")
    vectors = param_vectors(params, ["color_jitter", "blur", "flip"], AugmentConfig(), (20, 24))
    assert torch.equal(vectors, torch.zeros(3, 7))


def test_param_vectors_against_hand_computation() -> None:
    cfg = AugmentConfig(color_jitter={"brightness": 0.4, "contrast": 0.4, "saturation": 0.0, "hue": 0.1})
    params = identity_params(3, (20, 40), "cpu")
    params["crop_box"] = torch.tensor([[0, 0, 20, 40], [5, 10, 10, 20], [2, 30, 4, 8]])
    params["flip"] = torch.tensor([False, True, False])
    params["rotation_k"] = torch.tensor([0, 1, 3])
    params["color_factors"] = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.2, 0.6, 1.0, -0.05], [1.4, 1.4, 1.0, 0.1]])
    params["grayscale"] = torch.tensor([True, False, False])
    params["blur_sigma"] = torch.tensor([0.0, 2.0, 0.575])
    params["solarize"] = torch.tensor([False, False, True])
    ops = ["color_jitter", "crop", "flip", "rotation", "grayscale", "blur", "solarize"]  # not OP_NAMES order
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0],
            [0.5, -1, 0, -0.5, 0.25, 0.25, 0.5, 0.5, 1, 0, 1, 0, 1, 1, 0],
            [1, 1, 0, 1, 0.1, 0.75, 0.2, 0.2, 0, 0, -1, 0, 1, -0.5, 1],
        ]
    )
    torch.testing.assert_close(param_vectors(params, ops, cfg, (20, 40)), expected, rtol=0, atol=1e-6)
