"""Batched augmentation ops: per-sample parameter samplers and vectorised appliers.

Every op comes as a pair of small functions:

* ``sample_<op>(batch_size, cfg, generator, ...)`` draws one parameter set per sample with ``generator``,
  on the generator's device, always consuming the same random numbers for the same batch size (so a seed
  fixes every draw that follows);
* ``apply_<op>(images, params...)`` applies the parameters to float32 images [B, 3, H, W] in [0, 1] on any
  device. It touches only the samples the op applies to, without a Python loop over samples, and returns a
  new tensor (the input is never modified).

For one sample, each applier computes what ``torchvision.transforms.v2.functional`` (0.29) computes on a
float tensor with that sample's parameters; ``tests/test_augment_ops.py`` checks this sample by sample.
Parameter conventions (also the keys of `hicl.augment.pipeline.Pipeline`'s params):

=============  =======================  ================================================================
op             params                   convention
=============  =======================  ================================================================
crop           int64 [B, 4]             (top, left, height, width) in source pixels
flip           bool [B]                 horizontal flip
rotation       int64 [B]                k counter-clockwise quarter turns (``torch.rot90``), k in 0..3
color_jitter   float32 [B, 4],          factors (brightness, contrast, saturation, hue), identity
               int64 [B, 4], bool [B]   (1, 1, 1, 0); order: position -> op (0=b, 1=c, 2=s, 3=h); applied
grayscale      bool [B]                 replace by 3 copies of the luma
blur           float32 [B]              gaussian sigma; 0 = not applied
solarize       bool [B]                 invert values >= threshold
=============  =======================  ================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from hicl.manifest import BlurConfig, ColorJitterConfig, CropConfig, ProbabilityConfig

GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this many boxes before its centre-crop fallback
COLOR_IDENTITY: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue


class HasProbability(Protocol):
    """Any op config with an application probability p (ProbabilityConfig, ColorJitterConfig, BlurConfig, ...)."""

    p: float


class ColorJitterParams(NamedTuple):
    factors: Tensor  # float32 [B, 4]: brightness, contrast, saturation, hue
    order: Tensor  # int64 [B, 4]: order[i, j] = the op applied at position j to sample i
    applied: Tensor  # bool [B]


# ------------------------------------------------------------------------------------------ helpers
def _uniform(
    shape: tuple[int, ...], low: float | Tensor, high: float | Tensor, generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """U(low, high) of the given shape on the generator's device (low == high gives exactly low)."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)
    return u * (high - low) + low


def _apply_where(images: Tensor, parts: Sequence[tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]]) -> Tensor:
    """`images` with each `fn(subset, indices)` written over the samples its (disjoint) mask selects.

    Only the selected samples are gathered and transformed; the result is one `index_copy` of the batch, or
    `images` itself when no mask selects anything.
    """
    indices, outputs = [], []
    for mask, fn in parts:
        idx = mask.nonzero().squeeze(1)
        if idx.numel():
            indices.append(idx)
            outputs.append(fn(images[idx], idx))
    if not indices:
        return images
    if len(indices) == 1:  # the common case: no concatenation copy
        return images.index_copy(0, indices[0], outputs[0])
    return images.index_copy(0, torch.cat(indices), torch.cat(outputs))


def luma(images: Tensor) -> Tensor:
    """Grayscale [N, 1, H, W] = 0.2989 R + 0.587 G + 0.114 B (torchvision's `rgb_to_grayscale`)."""
    r, g, b = images.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _per_sample(values: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, 1], to broadcast one value per sample over [N, C, H, W]."""
    return values.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------------------------- crop
ImageSizes = tuple[int, int] | Tensor  # one (height, width) for the batch, or int64 [B, 2] per sample


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
    area = height * width * _uniform(shape, cfg.scale[0], cfg.scale[1], generator, torch.float64)
    aspect = _uniform(shape, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, torch.float64).exp()
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
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------------- coin-flip ops
def sample_coin(batch_size: int, cfg: HasProbability, generator: torch.Generator) -> Tensor:
    """bool [B], True with probability cfg.p: whether the op is applied to each sample."""
    return torch.rand(batch_size, generator=generator, device=generator.device) < cfg.p


# flip, grayscale and solarize are per-sample coin flips; one sampler serves all three.
sample_flip = sample_grayscale = sample_solarize = sample_coin


def apply_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the width axis of the samples where flip is True (torchvision's `horizontal_flip`)."""
    return _apply_where(images, [(flip, lambda x, _: x.flip(-1))])


def apply_grayscale(images: Tensor, gray: Tensor) -> Tensor:
    """Replace the samples where gray is True by 3 copies of their luma (`rgb_to_grayscale(img, 3)`)."""
    return _apply_where(images, [(gray, lambda x, _: luma(x).expand_as(x))])


def apply_solarize(images: Tensor, solarize: Tensor, threshold: float) -> Tensor:
    """x -> where(x >= threshold, 1 - x, x) for the samples where solarize is True (torchvision's `solarize`)."""
    return _apply_where(images, [(solarize, lambda x, _: torch.where(x >= threshold, 1.0 - x, x))])


# ----------------------------------------------------------------------------------------- rotation
def sample_rotation(batch_size: int, cfg: ProbabilityConfig, generator: torch.Generator) -> Tensor:
    """int64 [B] quarter turns: with probability p, k ~ U{0, 1, 2, 3} (0/90/180/270 degrees); otherwise 0."""
    applied = sample_coin(batch_size, cfg, generator)
    k = torch.randint(0, 4, (batch_size,), generator=generator, device=generator.device)
    return torch.where(applied, k, 0)


def apply_rotation(images: Tensor, k: Tensor) -> Tensor:
    """Rotate each sample by k[i] * 90 degrees counter-clockwise (`torch.rot90`, = torchvision's `rotate`).

    Odd k swaps height and width, so the images must be square.
    """

    def turn(quarters: int) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x, _: torch.rot90(x, quarters, dims=(-2, -1))

    return _apply_where(images, [(k == quarters, turn(quarters)) for quarters in (1, 2, 3)])


# ------------------------------------------------------------------------------------- colour jitter
def sample_color_jitter(batch_size: int, cfg: ColorJitterConfig, generator: torch.Generator) -> ColorJitterParams:
    """Per-sample colour jitter: with probability p, factors b, c, s ~ U(max(0, 1-x), 1+x), h ~ U(-hue, hue).

    order[i] is a uniform random permutation of (0=b, 1=c, 2=s, 3=h) (argsort of 4 uniforms) when
    cfg.order == "random", (0, 1, 2, 3) when "fixed". Samples not applied get the identity factors
    (1, 1, 1, 0) and order (0, 1, 2, 3).
    """
    device = generator.device
    applied = sample_coin(batch_size, cfg, generator)
    spans = (cfg.brightness, cfg.contrast, cfg.saturation)
    low = torch.tensor([max(0.0, 1 - x) for x in spans] + [-cfg.hue], device=device)
    high = torch.tensor([1 + x for x in spans] + [cfg.hue], device=device)
    factors = _uniform((batch_size, 4), low, high, generator)
    identity_order = torch.arange(4, device=device).expand(batch_size, 4)
    if cfg.order == "random":
        order = torch.rand((batch_size, 4), generator=generator, device=device).argsort(dim=1)
    else:
        order = identity_order
    column = applied.unsqueeze(1)
    return ColorJitterParams(
        factors=torch.where(column, factors, torch.tensor(COLOR_IDENTITY, device=device)),
        order=torch.where(column, order, identity_order),
        applied=applied,
    )


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """clamp(f * images + (1 - f) * other, 0, 1) with a per-sample f (torchvision's `_blend`)."""
    f = _per_sample(factor)
    return (images * f).add_(other * (1 - f)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """clamp(f * x, 0, 1) with a per-sample f [N]."""
    return (images * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-sample mean luma over H, W: clamp(f * x + (1 - f) * mean, 0, 1)."""
    return _blend(images, luma(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the luma image: clamp(f * x + (1 - f) * gray, 0, 1)."""
    return _blend(images, luma(images), factor)


def rgb_to_hsv(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB [N, 3, H, W] in [0, 1] -> (h, s, v), each [N, H, W], h in [0, 1) (torchvision's `_rgb_to_hsv`).

    Pillow's formulas: v = max, s = (max - min) / max, h = sector-wise (rc, gc, bc = (max - channel) /
    (max - min)) / 6 mod 1; grey pixels (max == min) get s = h = 0 without dividing by zero.
    """
    r, g, b = images.unbind(dim=1)
    # elementwise max / min: the same values as torchvision's aminmax over channels, several times faster
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - images) / divisor).unbind(dim=1)
    max_is_not_r = maxc != r
    max_is_g = maxc == g
    hr = (bc - gc) * ~max_is_not_r
    hg = (rc + 2.0 - bc) * (max_is_g & max_is_not_r)
    hb = (gc + 4.0 - rc) * (max_is_not_r & ~max_is_g)
    h = (hr + hg + hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return h, s, maxc


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(h, s, v), each [N, H, W] -> RGB [N, 3, H, W] (torchvision's `_hsv_to_rgb`).

    With i = floor(6 h), f = 6 h - i: p = v (1 - s), q = v (1 - s f), t = v (1 - s (1 - f)), each clamped to
    [0, 1]; by sector i mod 6 = 0..5, r takes (v, q, p, p, t, v), g (t, v, v, q, p, p), b (p, p, t, v, v, q).
    """
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = (sxf + one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = (one_minus_s * v).clamp_(0.0, 1.0)
    # selecting with masks picks the same values as torchvision's table gather, without an int64 index
    sector = [i == k for k in range(6)]
    sector[0] |= i == 6  # 6 h rounds up to 6 for h just below 1: sector 6 mod 6 = 0
    r = torch.where(sector[0] | sector[5], v, torch.where(sector[1], q, torch.where(sector[4], t, p)))
    g = torch.where(sector[1] | sector[2], v, torch.where(sector[3], q, torch.where(sector[0], t, p)))
    b = torch.where(sector[3] | sector[4], v, torch.where(sector[5], q, torch.where(sector[2], t, p)))
    return torch.stack((r, g, b), dim=1)


def adjust_hue(images: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by a per-sample f in [-0.5, 0.5]: RGB -> HSV, h = (h + f) mod 1, HSV -> RGB."""
    h, s, v = rgb_to_hsv(images)
    return hsv_to_rgb((h + factor.view(-1, 1, 1)).remainder_(1.0), s, v)


COLOR_ADJUSTERS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue,
)


def apply_color_jitter(images: Tensor, factors: Tensor, order: Tensor, applied: Tensor) -> Tensor:
    """Apply brightness, contrast, saturation and hue to the applied samples, each in its own order.

    For position j = 0..3, op `order[i, j]` is applied to sample i with factor `factors[i, op]`; at each
    position the samples sharing an op are transformed together. An op whose factor is its identity
    (1, 1, 1, 0) is skipped, as torchvision's ColorJitter skips ops whose range is 0 (of the four, only
    hue 0 would change values, by float rounding in the HSV round trip).
    """
    identity = torch.tensor(COLOR_IDENTITY, device=factors.device)
    active = factors != identity

    def jitter(x: Tensor, idx: Tensor) -> Tensor:
        # x is a gathered copy of the applied samples, so it is updated in place
        f, o, act = factors[idx], order[idx], active[idx]
        for position in range(4):
            for op, adjust in enumerate(COLOR_ADJUSTERS):
                sel = (act[:, op] & (o[:, position] == op)).nonzero().squeeze(1)
                if sel.numel():
                    x[sel] = adjust(x[sel], f[sel, op])
        return x

    return _apply_where(images, [(applied, jitter)])


# --------------------------------------------------------------------------------------------- blur
def default_blur_kernel_size(view_size: int) -> int:
    """SimCLR's kernel: 10% of the view size, made odd (+1 if even), at least 3 (32 px -> 3, 224 px -> 23)."""
    k = int(0.1 * view_size)
    return max(3, k + 1 - k % 2)


def sample_blur(batch_size: int, cfg: BlurConfig, generator: torch.Generator) -> Tensor:
    """float32 [B] gaussian sigma ~ U(sigma_min, sigma_max) with probability p, else 0 (not applied)."""
    applied = sample_coin(batch_size, cfg, generator)
    sigma = _uniform((batch_size,), cfg.sigma[0], cfg.sigma[1], generator)
    return torch.where(applied, sigma, 0.0)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D gaussians [N, k]: x = linspace(-(k-1)/2, (k-1)/2, k), exp(-0.5 (x / sigma)^2) / sum.

    torchvision's `_get_gaussian_kernel1d`, one kernel per sigma.
    """
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x / sigma.unsqueeze(1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def _blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-sample sigma as one depthwise separable convolution over [1, N*C, H, W]."""
    n, c, height, width = images.shape
    kernels = gaussian_kernels(sigma.to(images.dtype), kernel_size).repeat_interleave(c, dim=0)  # per (sample, chan)
    pad = kernel_size // 2
    x = F.pad(images.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    x = F.conv2d(x, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return x.view(n, c, height, width)


def apply_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur the samples with sigma > 0 (torchvision's `gaussian_blur(img, [k, k], [sigma, sigma])`).

    Reflect padding of k // 2 on each side, as torchvision; needs k // 2 < H and W.
    """
    return _apply_where(images, [(sigma > 0, lambda x, idx: _blur(x, sigma[idx], kernel_size))])


# ---------------------------------------------------------------------------------------- normalise
def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> Tensor:
    """(x - mean) / std per channel, then cast to `dtype` (torchvision's `normalize`, then `to`)."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return images.sub(mean_t).div_(std_t).to(dtype)
