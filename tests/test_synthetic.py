"""Tests for the procedural synthetic dataset (`hicl.data.synthetic`)."""

from __future__ import annotations

import colorsys

import pytest
import torch
from torch import Tensor

from hicl.data.synthetic import (
    LABEL_HEADS,
    SHAPES,
    ImageSet,
    hsv_to_rgb,
    make_synthetic,
    render,
    sample_params,
)


@pytest.fixture(scope="module")
def image_set() -> ImageSet:
    return make_synthetic(1000, 32, seed=0)


@pytest.fixture(scope="module")
def many_labels() -> dict[str, Tensor]:
    # Labels need no rendering, so frequencies can be checked on more images cheaply.
    return _params(4000, 32, seed=0)[1]


def _params(num_images: int, image_size: int, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return sample_params(num_images, image_size, torch.Generator().manual_seed(seed))


def _saturation(images: Tensor) -> Tensor:
    """HSV saturation of uint8 RGB images, float [N, H, W]."""
    rgb = images.float() / 255.0
    high, low = rgb.amax(dim=1), rgb.amin(dim=1)
    return (high - low) / high.clamp_min(1e-6)


def test_public_constants() -> None:
    assert LABEL_HEADS == {"shape": 8, "hue": 8, "chirality": 2, "size": 3, "quadrant": 4}
    assert len(SHAPES) == LABEL_HEADS["shape"] == len(set(SHAPES))


def test_shapes_dtypes_and_label_ranges(image_set: ImageSet) -> None:
    assert len(image_set) == 1000
    assert image_set.images.shape == (1000, 3, 32, 32)
    assert image_set.images.dtype == torch.uint8
    assert image_set.num_classes == LABEL_HEADS
    assert set(image_set.labels) == set(LABEL_HEADS)
    for head, num_classes in LABEL_HEADS.items():
        labels = image_set.labels[head]
        assert labels.dtype == torch.int64 and labels.shape == (1000,)
        assert int(labels.min()) == 0 and int(labels.max()) == num_classes - 1


def test_every_class_roughly_uniform(many_labels: dict[str, Tensor]) -> None:
    # Expected counts are 500..2000, so +-20% is more than 4 standard deviations of a multinomial.
    for head, num_classes in LABEL_HEADS.items():
        counts = torch.bincount(many_labels[head], minlength=num_classes).float()
        expected = 4000 / num_classes
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected, (head, counts.tolist())


def test_labels_are_pairwise_unrelated(many_labels: dict[str, Tensor]) -> None:
    # Independent heads: every (shape, chirality) and (size, quadrant) combination occurs.
    labels = many_labels
    assert torch.unique(labels["shape"] * 2 + labels["chirality"]).numel() == 16
    assert torch.unique(labels["size"] * 4 + labels["quadrant"]).numel() == 12


def test_same_seed_is_identical_and_other_seed_differs() -> None:
    first, second, other = (make_synthetic(200, 32, seed) for seed in (3, 3, 4))
    assert torch.equal(first.images, second.images)
    for head in LABEL_HEADS:
        assert torch.equal(first.labels[head], second.labels[head])
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.labels["shape"], other.labels["shape"])


def test_output_does_not_depend_on_chunk_size() -> None:
    small_chunks = make_synthetic(300, 32, seed=7, chunk_size=64)
    one_chunk = make_synthetic(300, 32, seed=7, chunk_size=1000)
    assert torch.equal(small_chunks.images, one_chunk.images)
    for head in LABEL_HEADS:
        assert torch.equal(small_chunks.labels[head], one_chunk.labels[head])


def test_make_synthetic_renders_its_sampled_params() -> None:
    dataset = make_synthetic(50, 32, seed=11)
    params, labels = _params(50, 32, seed=11)
    assert torch.equal(dataset.images, render(params, 32))
    for head in LABEL_HEADS:
        assert torch.equal(dataset.labels[head], labels[head])


def test_hsv_to_rgb_matches_colorsys() -> None:
    hsv = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    rgb = hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    expected = torch.tensor([colorsys.hsv_to_rgb(*triple) for triple in hsv.tolist()])
    assert torch.allclose(rgb, expected, atol=1e-5)


def test_object_centre_pixel_has_the_labelled_hue() -> None:
    # Every shape but the ring covers its own centre; at 64 px even the thinnest (star, cross) covers
    # the whole centre pixel, which therefore shows the object colour without blending or noise.
    size = 64
    params, labels = _params(250, size, seed=5)
    images = render(params, size)
    checked = 0
    for i in range(len(images)):
        if SHAPES[int(labels["shape"][i])] == "ring":
            continue
        col = int(size / 2 + float(params["offset_x"][i]))
        row = int(size / 2 + float(params["offset_y"][i]))
        red, green, blue = (images[i, :, row, col].double() / 255.0).tolist()
        hue, saturation, _ = colorsys.rgb_to_hsv(red, green, blue)
        assert int(hue * 8) == int(labels["hue"][i]), (i, hue)
        assert saturation > 0.6
        checked += 1
    assert checked > 180


def _mirrored(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Parameters of the horizontally mirrored scene.

    x -> -x about the image centre; the rotation (anticlockwise, object frame u right, v up) becomes
    angle -> -angle, which maps the object frame u -> -u. All shapes are symmetric in u, so only the
    small marker changes side: chirality flips. Grating wave vectors mirror kx -> -kx; the noise field
    is flipped.
    """
    mirrored = dict(params)
    mirrored["offset_x"] = -params["offset_x"]
    mirrored["angle"] = -params["angle"]
    mirrored["chirality"] = 1 - params["chirality"]
    mirrored["grating_kx"] = -params["grating_kx"]
    mirrored["noise"] = params["noise"].flip(-1)
    return mirrored


def test_mirrored_params_render_the_flipped_image() -> None:
    # Tolerance: +-1 grey level for float rounding (in practice the match is exact).
    params, _ = _params(256, 32, seed=9)
    flipped = render(params, 32).flip(-1).int()
    mirrored = render(_mirrored(params), 32).int()
    assert (flipped - mirrored).abs().max() <= 1


def test_chirality_is_what_distinguishes_a_mirror_image() -> None:
    # Mirroring the geometry but keeping the chirality must not reproduce the flipped image: a flip
    # really changes the chirality label.
    params, _ = _params(256, 32, seed=9)
    mirrored = _mirrored(params)
    mirrored["chirality"] = params["chirality"]
    flipped = render(params, 32).flip(-1).int()
    per_image_error = (flipped - render(mirrored, 32).int()).abs().amax(dim=(1, 2, 3))
    assert bool((per_image_error > 40).all())


def test_size_and_quadrant_are_visible_in_the_pixels(image_set: ImageSet) -> None:
    # Object pixels are saturated (>= 0.65), background ones are not (<= 0.3 plus noise).
    objects = _saturation(image_set.images) > 0.5
    count = objects.flatten(1).sum(dim=1).float()
    assert bool((count > 10).all())
    mean_count = [float(count[image_set.labels["size"] == k].mean()) for k in range(3)]
    assert mean_count[0] * 1.3 < mean_count[1] and mean_count[1] * 1.3 < mean_count[2], mean_count

    # The markers pull the pixel centroid off the object centre, so only most images agree.
    centres = torch.arange(32) + 0.5
    centroid_x = (objects * centres.view(1, 1, -1)).flatten(1).sum(dim=1) / count
    centroid_y = (objects * centres.view(1, -1, 1)).flatten(1).sum(dim=1) / count
    quadrant = 2 * (centroid_y > 16).long() + (centroid_x > 16).long()
    assert float((quadrant == image_set.labels["quadrant"]).float().mean()) > 0.7


@pytest.mark.parametrize(
    "kwargs", [{"num_images": -1}, {"image_size": 4}, {"chunk_size": 0}]
)
def test_invalid_arguments_raise(kwargs: dict[str, int]) -> None:
    arguments = {"num_images": 10, "image_size": 32, "seed": 0, **kwargs}
    with pytest.raises(ValueError):
        make_synthetic(**arguments)
