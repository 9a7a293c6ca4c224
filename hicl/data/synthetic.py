"""A procedural, deterministic synthetic image dataset (no downloads).

Every image shows one flat-coloured object, carrying two marker dots, on a low-saturation textured
background (a tinted colour modulated by two sinusoidal gratings plus pixel noise). Each image has
five labels ("heads"):

- ``shape`` (8 classes, see `SHAPES`): survives every standard augmentation.
- ``hue`` (8 bins of the object's HSV hue): colour jitter destroys it.
- ``chirality`` (2): a big dot sits at the object's "top" and a small dot at its right (0) or left
  (1). Going big -> small is clockwise for 0 and anticlockwise for 1 whatever the rotation, and a
  mirror swaps the two, so horizontal flips destroy this label.
- ``size`` (3 bins of the object radius): random-resized crops disturb it.
- ``quadrant`` (4: top-left 0, top-right 1, bottom-left 2, bottom-right 3) of the object centre:
  crops (and flips) disturb it.

Different downstream tasks need different invariances, so probing each head separately shows which
information a set of augmentations made a representation discard. The object's rotation is random
and continuous but not a label; the background's colour is drawn independently of every label.

All randomness comes from one `torch.Generator` and is drawn up front (the pixel noise as uint8 codes),
so the output does not depend on the chunk size used to render it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from hicl.lazy import lazy_import
from hicl.config import Section
from hicl.data.base import ImageSet, SourceConfig
from hicl.data.source import ArraySplit, Split, register

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")  # loaded at first use: the manifest imports this module

LABEL_HEADS: dict[str, int] = {"shape": 8, "hue": 8, "chirality": 2, "size": 3, "quadrant": 4}
SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "ring", "cross", "star", "bar", "semicircle")

# Object radius as a fraction of the image side, per size bin; a jitter of +-8% keeps the bins apart.
SIZE_FRACTIONS: tuple[float, float, float] = (0.16, 0.21, 0.26)
# How far (in object radii) the object centre is kept from the image border. The marker dots reach 1.67
# radii, so at most their outer ~0.2 radii can be cut off (the handedness stays visible); a margin
# covering them fully would leave large objects almost no room to move, blurring the quadrant label.
OBJECT_EXTENT = 1.45
# Marker dots in the object frame: (centre u, centre v, radius). The small dot's u is mirrored by chirality.
BIG_MARKER = (0.0, 1.35, 0.32)
SMALL_MARKER = (1.35, 0.0, 0.22)
NOISE_STD = 0.03
SUPERSAMPLING = 2

_SQRT3_HALF = math.sqrt(3.0) / 2.0


# ------------------------------------------------------------------------------------------- colour
def hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """Convert HSV (each in [0, 1], same shape) to RGB; returns shape ``hue.shape + (3,)``."""
    # Branch-free closed form: channel n in (R, G, B) = (5, 3, 1) is v * (1 - s * clamp(min(k, 4 - k), 0, 1))
    # with k = (n + 6h) mod 6.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype, device=hue.device)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(-1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(-1) * (1.0 - saturation.unsqueeze(-1) * ramp)


# ------------------------------------------------------------------------------------------- shapes
# Inside-tests in the object frame (u right, v up, unit radius). Each is symmetric under u -> -u, so a
# mirror image of an object is the same shape; only the markers carry handedness.
def _disk(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 1.0


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral, circumradius 1, apex on +v: three half-planes at distance 0.5 (the inradius).
    right = _SQRT3_HALF * u + 0.5 * v <= 0.5
    left = -_SQRT3_HALF * u + 0.5 * v <= 0.5
    return right & left & (v >= -0.5)


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 >= 0.55**2) & (r2 <= 1.0)


def _cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _star(u: Tensor, v: Tensor) -> Tensor:
    # Polar angle measured from +v so that one point is on the mirror axis.
    return torch.sqrt(u * u + v * v) <= 0.6 + 0.35 * torch.cos(5.0 * torch.atan2(u, v))


def _bar(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() <= 1.0) & (v.abs() <= 0.35)


def _semicircle(u: Tensor, v: Tensor) -> Tensor:
    # Half disk with its flat edge at v = -0.4, which puts its centroid (4/(3*pi) above the edge) near 0.
    w = v + 0.4
    return (u * u + w * w <= 1.0) & (w >= 0.0)


# Aligned with SHAPES.
_SHAPE_TESTS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _disk, _square, _triangle, _ring, _cross, _star, _bar, _semicircle,
)


# ------------------------------------------------------------------------------------- parameters
def sample_params(
    num_images: int, image_size: int, generator: torch.Generator
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Draw every per-image random variable as length-N tensors, in a fixed order.

    Returns ``(params, labels)``: `params` is what `render` needs (positions are offsets in pixels from
    the image centre, x right, y down; angles in radians; the gratings have shape [N, 2] with wave
    vectors in cycles per image; "noise" holds uint8 codes [N, 3, S, S]); `labels` maps each head of
    `LABEL_HEADS` to int64 [N].
    """
    n = num_images

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    def randint(high: int) -> Tensor:
        return torch.randint(high, (n,), generator=generator)

    shape = randint(len(SHAPES))
    hue_bin = randint(LABEL_HEADS["hue"])
    hue = (hue_bin + uniform(0.1, 0.9)) / LABEL_HEADS["hue"]
    saturation, value = uniform(0.65, 1.0), uniform(0.65, 1.0)
    angle = uniform(0.0, 2.0 * math.pi)
    size = randint(len(SIZE_FRACTIONS))
    radius = image_size * torch.tensor(SIZE_FRACTIONS)[size] * uniform(0.92, 1.08)
    half_range = image_size / 2.0 - OBJECT_EXTENT * radius
    offset_x, offset_y = half_range * uniform(-1.0, 1.0), half_range * uniform(-1.0, 1.0)
    chirality = randint(2)
    bg_hue, bg_saturation, bg_value = uniform(0.0, 1.0), uniform(0.0, 0.3), uniform(0.3, 0.7)
    grating_direction, grating_frequency = uniform(0.0, 2.0 * math.pi, 2), uniform(1.0, 4.0, 2)
    grating_phase, grating_amplitude = uniform(0.0, 2.0 * math.pi, 2), uniform(0.0, 0.15, 2)
    # Per-pixel noise as uint8 codes: as much memory as the images themselves, and drawn up front so the
    # output does not depend on the chunking.
    noise = torch.randint(256, (n, 3, image_size, image_size), generator=generator, dtype=torch.uint8)

    params = {
        "shape": shape, "hue": hue, "saturation": saturation, "value": value, "angle": angle,
        "radius": radius, "offset_x": offset_x, "offset_y": offset_y, "chirality": chirality,
        "bg_hue": bg_hue, "bg_saturation": bg_saturation, "bg_value": bg_value,
        "grating_kx": grating_frequency * torch.cos(grating_direction),
        "grating_ky": grating_frequency * torch.sin(grating_direction),
        "grating_phase": grating_phase, "grating_amplitude": grating_amplitude, "noise": noise,
    }
    # offset 0 is the image centre; y grows downwards, so the bottom row of quadrants is offset_y > 0.
    quadrant = 2 * (offset_y > 0).long() + (offset_x > 0).long()
    labels = {"shape": shape, "hue": hue_bin, "chirality": chirality, "size": size, "quadrant": quadrant}
    return params, labels


# -------------------------------------------------------------------------------------- rendering
def _centred_coords(num_samples: int, image_size: int) -> Tensor:
    """Sample positions along one axis, in pixels from the image centre (exactly antisymmetric)."""
    step = image_size / num_samples
    return (torch.arange(num_samples, dtype=torch.float32) + 0.5) * step - image_size / 2.0


def _object_frame(params: dict[str, Tensor], image_size: int) -> tuple[Tensor, Tensor]:
    """Object-frame coordinates (u, v) of every supersample, each [n, S*k, S*k] with k = SUPERSAMPLING."""
    coords = _centred_coords(image_size * SUPERSAMPLING, image_size)
    dx = coords.view(1, 1, -1) - params["offset_x"].view(-1, 1, 1)
    dy = params["offset_y"].view(-1, 1, 1) - coords.view(1, -1, 1)  # flip y so that v points up
    # Undo a rotation by `angle` (anticlockwise on screen) and scale to unit radius. Written so that
    # dx -> -dx, angle -> -angle gives exactly u -> -u, keeping mirrored renders bit-identical at edges.
    cos = (torch.cos(params["angle"]) / params["radius"]).view(-1, 1, 1)
    sin = (torch.sin(params["angle"]) / params["radius"]).view(-1, 1, 1)
    u = cos * dx + sin * dy
    v = cos * dy - sin * dx
    return u, v


def _shape_mask(shape: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Inside-mask of each image's own shape; each test runs only on the images that have that shape."""
    mask = torch.zeros(u.shape, dtype=torch.bool)
    for index, inside in enumerate(_SHAPE_TESTS):
        rows = (shape == index).nonzero(as_tuple=True)[0]
        if rows.numel():
            mask[rows] = inside(u[rows], v[rows])
    return mask


def _marker_mask(chirality: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Inside-mask of the two marker dots; chirality 1 mirrors the small dot to the left."""
    big_u, big_v, big_r = BIG_MARKER
    small_u, small_v, small_r = SMALL_MARKER
    side = (1 - 2 * chirality).to(u.dtype).view(-1, 1, 1) * small_u
    du, dv = u - big_u, v - big_v
    big = du.mul_(du).add_(dv.mul_(dv)) <= big_r**2
    du, dv = u - side, v - small_v
    small = du.mul_(du).add_(dv.mul_(dv)) <= small_r**2
    return big.logical_or_(small)


def _object_coverage(params: dict[str, Tensor], image_size: int) -> Tensor:
    """Fraction of each pixel covered by the object and markers, [n, 1, S, S] (anti-aliased)."""
    u, v = _object_frame(params, image_size)
    mask = _shape_mask(params["shape"], u, v) | _marker_mask(params["chirality"], u, v)
    k = SUPERSAMPLING
    blocks = mask.view(-1, image_size, k, image_size, k).float()
    return blocks.mean(dim=(2, 4)).unsqueeze(1)


def _background(params: dict[str, Tensor], image_size: int) -> Tensor:
    """Tinted base colour modulated by two gratings, float RGB [n, 3, S, S] (noise not included)."""
    base = hsv_to_rgb(params["bg_hue"], params["bg_saturation"], params["bg_value"]).view(-1, 3, 1, 1)
    coords = _centred_coords(image_size, image_size) / image_size  # in image widths
    x, y = coords.view(1, 1, 1, -1), coords.view(1, 1, -1, 1)
    kx, ky = params["grating_kx"][..., None, None], params["grating_ky"][..., None, None]
    phase = params["grating_phase"][..., None, None]
    amplitude = params["grating_amplitude"][..., None, None]
    gratings = amplitude * torch.sin(2.0 * math.pi * (kx * x + ky * y) + phase)  # [n, 2, S, S]
    return base * (1.0 + gratings.sum(dim=1, keepdim=True))


def _noise(codes: Tensor) -> Tensor:
    """Map uint8 noise codes to zero-mean uniform noise with std `NOISE_STD` (float, same shape)."""
    unit = (codes.to(torch.float32) + 0.5) / 256.0
    return (unit - 0.5) * (NOISE_STD * math.sqrt(12.0))


def render(params: dict[str, Tensor], image_size: int) -> Tensor:
    """Render images from `sample_params`-style parameters; returns uint8 RGB [n, 3, S, S].

    Noise only affects the background, so the object keeps exactly its own colour.
    """
    coverage = _object_coverage(params, image_size)
    colour = hsv_to_rgb(params["hue"], params["saturation"], params["value"]).view(-1, 3, 1, 1)
    background = _background(params, image_size) + _noise(params["noise"])
    image = coverage * colour + (1.0 - coverage) * background
    return image.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def make_synthetic(num_images: int, image_size: int, seed: int, chunk_size: int = 1024) -> ImageSet:
    """Generate `num_images` RGB images of `image_size` pixels square, deterministically from `seed`.

    Images are rendered `chunk_size` at a time to bound memory; the result does not depend on it.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    params, labels = sample_params(num_images, image_size, torch.Generator().manual_seed(seed))
    images = torch.empty((num_images, 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, num_images, chunk_size):
        chunk = {name: values[start : start + chunk_size] for name, values in params.items()}
        images[start : start + chunk_size] = render(chunk, image_size)
    return ImageSet(images=images, labels=labels, num_classes=dict(LABEL_HEADS))


# ------------------------------------------------------------------------------------------- source
# Keeps the test split disjoint from the training split of the same data seed.
TEST_SEED_OFFSET = 1_000_003


class SyntheticConfig(Section):
    """Sizes of the built-in procedural dataset."""

    num_train: Annotated[int, Field(gt=0, le=2_000_000, description="training images")] = 10_000
    num_test: Annotated[int, Field(gt=0, le=2_000_000)] = 2_000
    seed: Annotated[int, Field(ge=0)] = Field(0, description="data seed, independent of the training seed")


class SyntheticSource(SourceConfig):
    """shapes rendered at `image_size` from `synthetic.seed` (no files)."""

    source: Literal["synthetic"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()


@register(SyntheticSource)
def open_synthetic(cfg: SyntheticSource, split: Split) -> ArraySplit:
    syn = cfg.synthetic
    count, seed = (syn.num_train, syn.seed) if split != "test" else (syn.num_test, syn.seed + TEST_SEED_OFFSET)
    if cfg.max_images is not None:
        count = min(count, cfg.max_images)
    images = make_synthetic(count, cfg.image_size, seed)
    return ArraySplit(images.images, images.labels, images.num_classes, files=[])
