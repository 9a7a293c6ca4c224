"""crop: random resized crop (`RandomResizedCrop`), the first op of every pipeline.

Parameter `crop_box` int64 [B, 4] = (top, left, height, width) in source pixels; identity: the whole
(true) image. Encoding: top / H, left / W, height / H, width / W. Strength rule: min scale +0.1 per
level. Probe: the area fraction, in 10 bins.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from hicl.augment.batched import check_range, uniform
from hicl.augment.op import ImageSizes, Op, ParamSpec, Params, ProbeVariant, register_op
from hicl.config import Section
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this many boxes before its centre-crop fallback
CROP_SCALE_STEP = 0.1  # the `strength` hierarchy: min scale +0.1 per level below the last stage

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class CropConfig(Section):
    scale: tuple[Fraction, Fraction] = (0.2, 1.0)
    ratio: tuple[Positive, Positive] = (3 / 4, 4 / 3)

    _ranges = field_validator("scale", "ratio")(classmethod(lambda cls, v: check_range(v)))


def _per_sample_sizes(image_hw: ImageSizes, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(height, width) as float64 [B, 1] columns, from one size for all samples or one per sample."""
    sizes = torch.as_tensor(image_hw, dtype=torch.float64, device=device).reshape(-1, 2)
    sizes = sizes.expand(batch_size, 2)
    return sizes[:, :1], sizes[:, 1:]


def _fallback_crop(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> Tensor:
    """torchvision's centre crop when no attempt fits: the largest centred box whose aspect is clamped to ratio.

    `height`, `width`: float64 [B]; returns float64 [B, 4] = (top, left, h, w).
    """
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    w = torch.where(wide, (height * max(ratio)).round(), width)
    h = torch.where(narrow, (width / min(ratio)).round(), height)
    return torch.stack(((height - h).div(2).floor(), (width - w).div(2).floor(), h, w), dim=1)


def sample_crop(batch_size: int, image_hw: ImageSizes, cfg: CropConfig, generator: torch.Generator) -> Tensor:
    """Random resized crop boxes int64 [B, 4] = (top, left, height, width), `RandomResizedCrop.get_params` semantics.

    Per attempt: area = H*W*U(scale), r = exp(U(log ratio)), w = round(sqrt(area*r)), h = round(sqrt(area/r)),
    valid when 0 < w <= W and 0 < h <= H. All 10 attempts are drawn at once and the first valid one is kept;
    top ~ U{0..H-h}, left ~ U{0..W-w}. Samples without a valid attempt get torchvision's centred fallback box.
    `image_hw` is one (H, W) for the batch or int64 [B, 2] per sample (images padded to a square keep
    their true size there, so the boxes cover the whole true image and never the padding).
    """
    height, width = _per_sample_sizes(image_hw, batch_size, generator.device)
    shape = (batch_size, CROP_ATTEMPTS)
    # float64 so that round() sees the values torchvision's Python-float arithmetic sees
    area = height * width * uniform(shape, cfg.scale[0], cfg.scale[1], generator, torch.float64)
    aspect = uniform(shape, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, torch.float64).exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    attempt = torch.arange(CROP_ATTEMPTS, device=valid.device)
    first = torch.where(valid, attempt, CROP_ATTEMPTS).amin(dim=1, keepdim=True).clamp_(max=CROP_ATTEMPTS - 1)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    # torch.randint(0, n) with a per-sample n: floor(U[0, 1) * n)
    offset = torch.rand((2, batch_size), generator=generator, device=generator.device, dtype=torch.float64)
    top = (offset[0] * (height - h + 1)).floor()
    left = (offset[1] * (width - w + 1)).floor()
    boxes = torch.stack((top, left, h, w), dim=1)
    return torch.where(valid.any(dim=1, keepdim=True), boxes, _fallback_crop(height, width, cfg.ratio)).long()


def _source_coords(start: Tensor, length: Tensor, size: int, full: int) -> Tensor:
    """grid_sample coordinates [B, size] along one axis for resizing [start, start+length) to `size` pixels.

    Crop-local source src = (dst + 0.5) * length / size - 0.5 clamped to [0, length - 1] (what bilinear
    `interpolate` with align_corners=False does, the clamp being its border handling); the image coordinate
    start + src maps to grid_sample's normalised g = (2 * (start + src) + 1) / full - 1.
    """
    dst = torch.arange(size, device=start.device, dtype=torch.float64) + 0.5
    src = (dst * (length / size).unsqueeze(1) - 0.5).clamp_(min=0)
    src = torch.minimum(src, (length - 1).unsqueeze(1))
    return (2 * (start.unsqueeze(1) + src) + 1) / full - 1


def apply_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop each sample to its box and resize it to size x size with one bilinear `grid_sample`.

    Equal to `torchvision.transforms.v2.functional.resized_crop(img, *box, [size, size], antialias=False)`;
    boxes must lie inside the image (as `sample_crop`'s do).
    """
    n, _, height, width = images.shape
    top, left, h, w = boxes.to(torch.float64).unbind(dim=1)
    gy = _source_coords(top, h, size, height).unsqueeze(2).expand(n, size, size)
    gx = _source_coords(left, w, size, width).unsqueeze(1).expand(n, size, size)
    grid = torch.stack((gx, gy), dim=-1).to(images.dtype)
    # border padding: a bilinear weight of ~1e-7 on the pixel past the image edge reads the edge, not zero
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def full_box(batch_size: int, image_hw: ImageSizes, device: torch.device | str) -> Tensor:
    """The identity box int64 [B, 4] = (0, 0, H, W): the whole (true) image."""
    sizes = torch.as_tensor(image_hw, dtype=torch.int64, device=device).reshape(-1, 2).expand(batch_size, 2)
    return torch.cat([torch.zeros_like(sizes), sizes], dim=1)


def _encode(params: Params, cfg: CropConfig, image_hw: ImageSizes, encoding: str) -> Tensor:
    sizes = torch.as_tensor(image_hw, device=params["crop_box"].device).reshape(-1, 2)
    return params["crop_box"] / sizes.repeat(1, 2)


def _weaken(cfg: CropConfig, levels: int) -> CropConfig:
    low, high = cfg.scale
    return cfg.model_copy(update={"scale": (min(high, low + CROP_SCALE_STEP * levels), high)})


def _area(params: Params, image_hw: tuple[int, int]) -> dict[str, Tensor]:
    box = params["crop_box"].float()
    return {"crop": box[:, 2] * box[:, 3] / (image_hw[0] * image_hw[1])}


OP = register_op(Op(
    name="crop",
    order=10,
    config=CropConfig,
    default=CropConfig(),
    params=(ParamSpec("crop_box", "int64", full_box, (4,)),),
    sample=lambda n, image_hw, cfg, generator, ctx: {"crop_box": sample_crop(n, image_hw, cfg, generator)},
    apply=lambda x, params, cfg, ctx: apply_crop(x, params["crop_box"], ctx.view_size),
    encode=_encode,
    dim=4,
    weaken=_weaken,
    probes=(ProbeVariant("crop", configure=lambda cfg: cfg, targets=_area, strength=lambda cfg: 1.0 - cfg.scale[0]),),
))
