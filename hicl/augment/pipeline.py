"""The augmentation pipeline: per-sample random views of a whole batch, with the parameters that made them.

Data flow of `Pipeline.__call__(images, generator)`:

1. ``images`` is a uint8 batch [B, 3, H, W] on its device (CPU or CUDA).
2. `Pipeline.sample` draws every parameter with ``generator`` on the generator's device, in the canonical
   op order `OP_NAMES`, for the pipeline's ops only; the other ops keep identity parameters. The small
   parameter tensors then move to the images' device.
3. `Pipeline.apply` converts the batch to float32 in [0, 1] (x / 255), then applies the ops in `OP_NAMES`
   order (crop, flip, rotation, color_jitter, grayscale, blur, solarize), each vectorised over the samples
   with their own parameters (`hicl.augment.ops`). The crop resamples to the square view size; without a
   crop op, the whole image is still resized when it is not already view_size x view_size.
4. The views are normalised, (x - mean) / std, and cast to the output dtype (float32 or bfloat16).

The parameters come back as a dict of [B, ...] tensors on the images' device with every key, whatever the
ops: ``crop_box`` int64 [B, 4] (top, left, height, width; identity 0, 0, H, W), ``flip`` bool,
``rotation_k`` int64, ``color_factors`` float32 [B, 4] (b, c, s, h; identity 1, 1, 1, 0), ``color_order``
int64 [B, 4] (identity 0, 1, 2, 3), ``color_applied`` bool, ``grayscale`` bool, ``blur_sigma`` float32
(0 = not applied) and ``solarize`` bool.

`param_vectors` turns them into the fixed-length vectors the embedding MLPs read, one block per op,
concatenated in the order the ops are given:

============  ====  ================================================================================
op            dims  values
============  ====  ================================================================================
crop          4     top / H, left / W, height / H, width / W
flip          1     1 if flipped else 0
rotation      2     cos(k * 90 deg), sin(k * 90 deg)
color_jitter  4     `encoding="normalized"`: (b - 1) / brightness, (c - 1) / contrast, (s - 1) / saturation,
                    h / hue (0 where the configured range is 0): identity -> zeros, the configured range
                    -> [-1, 1]. `encoding="reference"` (the reference code's): the raw factors b, c, s, h,
                    identity (1, 1, 1, 0) when jitter was not applied
grayscale     1     1 if grey else 0
blur          2     1 if blurred else 0; (sigma - mid) / half_range if blurred else 0 (mid, half_range of
                    the configured sigma range; 0 when that range is a single value)
solarize      1     1 if solarized else 0
============  ====  ================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hicl.augment import ops as A
from hicl.manifest import OP_NAMES, AugmentConfig

Params = dict[str, Tensor]

PARAM_DIMS: dict[str, int] = {
    "crop": 4, "flip": 1, "rotation": 2, "color_jitter": 4, "grayscale": 1, "blur": 2, "solarize": 1,
}


def _check_ops(ops: Sequence[str]) -> None:
    unknown = [op for op in ops if op not in OP_NAMES]
    if unknown:
        raise ValueError(f"unknown augmentation op {unknown[0]!r}; expected one of {', '.join(OP_NAMES)}")


def identity_params(batch_size: int, image_hw: A.ImageSizes, device: torch.device | str) -> Params:
    """Parameters under which every op leaves the image unchanged (the full (true) image as crop box)."""
    sizes = torch.as_tensor(image_hw, dtype=torch.int64, device=device).reshape(-1, 2).expand(batch_size, 2)

    def false() -> Tensor:  # a fresh tensor per key, so that editing one entry in place leaves the others
        return torch.zeros(batch_size, dtype=torch.bool, device=device)

    return {
        "crop_box": torch.cat([torch.zeros_like(sizes), sizes], dim=1),
        "flip": false(),
        "rotation_k": torch.zeros(batch_size, dtype=torch.int64, device=device),
        "color_factors": torch.tensor(A.COLOR_IDENTITY, device=device).repeat(batch_size, 1),
        "color_order": torch.arange(4, device=device).repeat(batch_size, 1),
        "color_applied": false(),
        "grayscale": false(),
        "blur_sigma": torch.zeros(batch_size, device=device),
        "solarize": false(),
    }


class Pipeline:
    """Random augmentation of uint8 batches into normalised square views, with per-sample parameters.

    `ops` may list the ops in any order; they are drawn and applied in `OP_NAMES` order.
    """

    def __init__(
        self, ops: Sequence[str], cfg: AugmentConfig, view_size: int, out_dtype: torch.dtype = torch.float32
    ) -> None:
        _check_ops(ops)
        self.ops: tuple[str, ...] = tuple(op for op in OP_NAMES if op in ops)
        self.cfg = cfg
        self.view_size = view_size
        self.out_dtype = out_dtype
        self.blur_kernel_size = cfg.blur.kernel_size or A.default_blur_kernel_size(view_size)

    def __repr__(self) -> str:
        return f"Pipeline(ops={list(self.ops)}, view_size={self.view_size}, out_dtype={self.out_dtype})"

    def sample(self, batch_size: int, image_hw: A.ImageSizes, generator: torch.Generator) -> Params:
        """All parameters for a batch, drawn with `generator` on its device (identity for ops not in the pipeline)."""
        cfg = self.cfg
        samplers: dict[str, Callable[[], Params]] = {
            "crop": lambda: {"crop_box": A.sample_crop(batch_size, image_hw, cfg.crop, generator)},
            "flip": lambda: {"flip": A.sample_flip(batch_size, cfg.flip, generator)},
            "rotation": lambda: {"rotation_k": A.sample_rotation(batch_size, cfg.rotation, generator)},
            "color_jitter": lambda: dict(
                zip(("color_factors", "color_order", "color_applied"),
                    A.sample_color_jitter(batch_size, cfg.color_jitter, generator))
            ),
            "grayscale": lambda: {"grayscale": A.sample_grayscale(batch_size, cfg.grayscale, generator)},
            "blur": lambda: {"blur_sigma": A.sample_blur(batch_size, cfg.blur, generator)},
            "solarize": lambda: {"solarize": A.sample_solarize(batch_size, cfg.solarize, generator)},
        }
        params = identity_params(batch_size, image_hw, generator.device)
        for op in self.ops:
            params.update(samplers[op]())
        return params

    def apply(self, images: Tensor, params: Params, padded: bool = False) -> Tensor:
        """Views [B, 3, S, S] in the output dtype from uint8 images and parameters on the images' device.

        `padded`: the images are padded squares, so even without a crop op the (identity) crop box, the
        true image, is cut out and resized.
        """
        cfg, size = self.cfg, self.view_size
        appliers: dict[str, Callable[[Tensor], Tensor]] = {
            "crop": lambda x: A.apply_crop(x, params["crop_box"], size),
            "flip": lambda x: A.apply_flip(x, params["flip"]),
            "rotation": lambda x: A.apply_rotation(x, params["rotation_k"]),
            "color_jitter": lambda x: A.apply_color_jitter(
                x, params["color_factors"], params["color_order"], params["color_applied"]
            ),
            "grayscale": lambda x: A.apply_grayscale(x, params["grayscale"]),
            "blur": lambda x: A.apply_blur(x, params["blur_sigma"], self.blur_kernel_size),
            "solarize": lambda x: A.apply_solarize(x, params["solarize"], cfg.solarize.threshold),
        }
        # without a crop op the full-image box still resizes sources that are not already the view size
        resize_only = "crop" not in self.ops and (padded or tuple(images.shape[-2:]) != (size, size))
        x = images.to(torch.float32).mul_(1 / 255)  # torchvision's ToDtype(float32, scale=True)
        for op in ("crop", *self.ops) if resize_only else self.ops:
            x = appliers[op](x)
        return A.normalize(x, cfg.normalize.mean, cfg.normalize.std, self.out_dtype)

    def __call__(
        self, images: Tensor, generator: torch.Generator, sizes: Tensor | None = None
    ) -> tuple[Tensor, Params]:
        """(views [B, 3, S, S], params) for a uint8 batch [B, 3, H, W].

        `sizes` (int64 [B, 2], on the generator's device) gives each image's true (height, width) when the
        images were padded to a square at the top-left; crops are then drawn inside the true image.
        `generator` may live on the CPU or on the images' device; the params end up on the images' device.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        batch_size, _, height, width = images.shape
        params = self.sample(batch_size, (height, width) if sizes is None else sizes, generator)
        params = {key: value.to(images.device) for key, value in params.items()}
        return self.apply(images, params, padded=sizes is not None), params


def param_vector_dim(ops: Sequence[str]) -> int:
    """Length of `param_vectors` for these ops (see the table in the module docstring)."""
    _check_ops(ops)
    return sum(PARAM_DIMS[op] for op in ops)


def _scaled(values: Tensor, span: float) -> Tensor:
    """values / span, or zeros when the configured span is 0 (the op then never varies)."""
    return values / span if span > 0 else torch.zeros_like(values)


def param_vectors(
    params: Params,
    ops: Sequence[str],
    cfg: AugmentConfig,
    image_hw: A.ImageSizes,
    encoding: str = "normalized",
) -> Tensor:
    """float32 [B, param_vector_dim(ops)]: the encoded parameters of `ops`, in the order given.

    `image_hw`: the (height, width) the crop boxes were drawn in, one for the batch or int64 [B, 2].
    `encoding` only changes the colour-jitter block (the one op the reference code embeds); see the table above.
    """
    _check_ops(ops)
    if encoding not in ("normalized", "reference"):
        raise ValueError(f"unknown parameter encoding {encoding!r}; expected normalized or reference")

    def crop() -> Tensor:
        sizes = torch.as_tensor(image_hw, device=params["crop_box"].device).reshape(-1, 2)
        return params["crop_box"] / sizes.repeat(1, 2)

    def rotation() -> Tensor:
        # exact table rather than cos/sin of a float angle, so 90 deg gives cos = 0, not 6e-17
        cos_sin = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], device=params["rotation_k"].device)
        return cos_sin[params["rotation_k"]]

    def color_jitter() -> Tensor:
        if encoding == "reference":
            # sampling leaves the identity (1, 1, 1, 0) where jitter was not applied, as the reference records it
            return params["color_factors"]
        jitter = cfg.color_jitter
        shifted = params["color_factors"] - torch.tensor(A.COLOR_IDENTITY, device=params["color_factors"].device)
        spans = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        return torch.stack([_scaled(shifted[:, i], span) for i, span in enumerate(spans)], dim=1)

    def blur() -> Tensor:
        sigma = params["blur_sigma"]
        low, high = cfg.blur.sigma
        applied = sigma > 0
        offset = torch.where(applied, _scaled(sigma - (low + high) / 2, (high - low) / 2), 0.0)
        return torch.stack((applied.float(), offset), dim=1)

    def flag(key: str) -> Callable[[], Tensor]:
        return lambda: params[key].float().unsqueeze(1)

    blocks: dict[str, Callable[[], Tensor]] = {
        "crop": crop, "flip": flag("flip"), "rotation": rotation, "color_jitter": color_jitter,
        "grayscale": flag("grayscale"), "blur": blur, "solarize": flag("solarize"),
    }
    batch_size = params["flip"].shape[0]
    if not ops:
        return torch.zeros(batch_size, 0, device=params["flip"].device)
    return torch.cat([blocks[op]().float() for op in ops], dim=1)
