"""The augmentation pipeline: per-sample random views of a whole batch, with the parameters that made them.

Data flow of `Pipeline.__call__(images, generator)`:

1. ``images`` is a uint8 batch [B, 3, H, W] on its device (CPU or CUDA).
2. `Pipeline.sample` draws every parameter with ``generator`` on the generator's device, op by op in
   canonical order (`hicl.augment.op.op_names`), for the pipeline's ops only; every other registered op
   keeps its identity parameters. The small parameter tensors then move to the images' device.
3. `Pipeline.apply` converts the batch to float32 in [0, 1] (x / 255), then applies the ops in canonical
   order, each vectorised over the samples with their own parameters (`hicl.augment.ops`). The crop
   resamples to the square view size; without a crop op, the whole image is still resized when it is not
   already view_size x view_size.
4. The views are normalised, (x - mean) / std, and cast to the output dtype (float32 or bfloat16).

The parameters come back as a dict of [B, ...] tensors on the images' device with the keys of every
registered op, whatever the pipeline's ops (each op module's docstring lists its keys and identity).

`param_vectors` turns them into the fixed-length vectors the embedding MLPs read: one block of
`Op.dim` values per op (`Op.encode`, documented in each op module), concatenated in the order the ops
are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hicl.augment.batched import normalize
from hicl.augment.op import OPS, ApplyContext, ImageSizes, Op, ParamSpec, Params, canonical
from hicl.augment.ops import crop
from hicl.manifest import AugmentConfig

ENCODINGS = ("normalized", "reference")


def _identity(spec: ParamSpec, batch_size: int, image_hw: ImageSizes, device: torch.device | str) -> Tensor:
    """A fresh [B, *shape] tensor of the spec's identity (fresh: editing one entry in place leaves the others)."""
    if callable(spec.identity):
        return spec.identity(batch_size, image_hw, device)
    value = torch.tensor(spec.identity, dtype=getattr(torch, spec.dtype), device=device)
    return value.repeat(batch_size, *([1] * value.dim()))


def identity_params(batch_size: int, image_hw: ImageSizes, device: torch.device | str) -> Params:
    """Parameters under which every registered op leaves the image unchanged (the full (true) image as crop box)."""
    return {
        spec.key: _identity(spec, batch_size, image_hw, device) for op in OPS.values() for spec in op.params
    }


class Pipeline:
    """Random augmentation of uint8 batches into normalised square views, with per-sample parameters.

    `ops` may list the ops in any order; they are drawn and applied in canonical order.
    """

    def __init__(
        self, ops: Sequence[str], cfg: AugmentConfig, view_size: int, out_dtype: torch.dtype = torch.float32
    ) -> None:
        self.ops: tuple[str, ...] = tuple(canonical(ops))
        self._records: list[Op] = [OPS[name] for name in self.ops]
        self.cfg = cfg
        self.view_size = view_size
        self.out_dtype = out_dtype
        self._context = ApplyContext(view_size=view_size)

    def __repr__(self) -> str:
        return f"Pipeline(ops={list(self.ops)}, view_size={self.view_size}, out_dtype={self.out_dtype})"

    def sample(self, batch_size: int, image_hw: ImageSizes, generator: torch.Generator) -> Params:
        """All parameters for a batch, drawn with `generator` on its device (identity for ops not in the pipeline)."""
        params = identity_params(batch_size, image_hw, generator.device)
        for op in self._records:
            params.update(op.sample(batch_size, image_hw, getattr(self.cfg, op.name), generator, self._context))
        return params

    def apply(self, images: Tensor, params: Params, padded: bool = False) -> Tensor:
        """Views [B, 3, S, S] in the output dtype from uint8 images and parameters on the images' device.

        `padded`: the images are padded squares, so even without a crop op the (identity) crop box, the
        true image, is cut out and resized.
        """
        size = self.view_size
        x = images.to(torch.float32).mul_(1 / 255)  # torchvision's ToDtype(float32, scale=True)
        # without a crop op the full-image box still resizes sources that are not already the view size
        if "crop" not in self.ops and (padded or tuple(images.shape[-2:]) != (size, size)):
            x = crop.apply_crop(x, params["crop_box"], size)
        for op in self._records:
            x = op.apply(x, params, getattr(self.cfg, op.name), self._context)
        return normalize(x, self.cfg.normalize.mean, self.cfg.normalize.std, self.out_dtype)

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
    """Length of `param_vectors` for these ops: the sum of their `Op.dim`."""
    return sum(OPS[op].dim for op in canonical(ops))


def param_vectors(
    params: Params,
    ops: Sequence[str],
    cfg: AugmentConfig,
    image_hw: ImageSizes,
    encoding: str = "normalized",
) -> Tensor:
    """float32 [B, param_vector_dim(ops)]: the encoded parameters of `ops`, in the order given.

    `image_hw`: the (height, width) the crop boxes were drawn in, one for the batch or int64 [B, 2].
    `encoding`: normalized or reference (only the ops the reference code embeds differ; see their modules).
    """
    canonical(ops)
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown parameter encoding {encoding!r}; expected normalized or reference")
    if not ops:
        first = next(iter(params.values()))
        return torch.zeros(first.shape[0], 0, device=first.device)
    blocks = [OPS[op].encode(params, getattr(cfg, op), image_hw, encoding).float() for op in ops]
    return torch.cat(blocks, dim=1)
