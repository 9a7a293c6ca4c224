"""What every data source shares: its config fields, decoded image sets, decoding and fitting images.

A source yields *records*: a way to get one image's encoded bytes (or decoded pixels) and its labels.
Workers decode each record and fit it to the batch's square side in one of two ways:

- training (`fit_to_square`): the longer side is resized to `image_size` keeping the aspect ratio, the
  image is placed at the top-left of a black `image_size` square, and its true height and width travel
  with the batch. Random-resized crops are then drawn inside the true image with torchvision's rule
  (`hicl.augment.ops.sample_crop` with per-sample sizes), so a crop can cover the whole image, not only
  a centre square, and never sees the padding.
- evaluation (`center_crop`): the shorter side is resized to `view_size / crop_pct`, then the centre
  `view_size` square is cut (the standard "resize 256, centre crop 224" at 224 px). Images already at
  the view size are left as they are.

Decoding uses `torchvision.io.decode_image` (JPEG, PNG, WebP, GIF, ...), with Pillow as the fallback for
what it cannot read (CMYK JPEGs, some PNG modes); grey images become three channels and 16-bit images
are reduced to 8 bits. A file that neither can decode, or that is smaller than `MIN_SIDE` pixels, is a
`BadImage`: the loader skips and counts it, or stops naming it, as `data.on_bad_image` says.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from hicl.lazy import lazy_import
from hicl.config import MAX_IMAGES, Section

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")  # loaded at first use: the manifest imports this module

MIN_SIDE = 8  # smaller images cannot be cropped meaningfully (1x1 px thumbnails, broken exports)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: about 0.25 GiB of RGB pixels


class SourceConfig(Section):
    """Fields every `data.source` has."""

    source: str = Field(description="which data source (each source module narrows this to its name)")
    image_size: Annotated[int, Field(ge=8, le=1024)] = Field(
        32, description="side of the square uint8 images handed to the device; default view size"
    )
    max_images: Annotated[int, Field(gt=0, le=MAX_IMAGES)] | None = Field(
        None, description="use only the first N images of each split (in a fixed order), for smoke runs"
    )
    workers: Annotated[int, Field(ge=0, le=256)] = Field(
        4, description="DataLoader worker processes that decode and resize (0: in the main process)"
    )
    resident: Literal["auto", "always", "never"] = Field(
        "auto", description="hold the decoded training set on the device: auto does when it fits in 2 GiB"
    )
    crop_pct: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.875, description="evaluation: resize the shorter side to view_size / crop_pct, then centre-crop"
    )
    max_pixels: Annotated[int, Field(gt=0, le=2**40)] = Field(
        MAX_PIXELS, description="images with more pixels (read from the file's header) are bad images: "
        "a small file can hold a huge image (default: Pillow's limit)",
    )
    on_bad_image: Literal["skip", "fail"] = Field(
        "skip", description="unreadable, corrupt or tiny files: skip and count them, or stop naming the file"
    )


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class ImageSet:
    """Images with one integer label per head, decoded in memory."""

    images: Tensor  # uint8 [N, 3, H, W], RGB
    labels: dict[str, Tensor]  # head -> int64 [N]
    num_classes: dict[str, int]
    sizes: Tensor | None = None  # int64 [N, 2]: true (height, width) inside a padded square; None: all full

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class SkippedImages:
    """Files the loader could not use, with why (kept for the run's log and env.json)."""

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, reason: str) -> None:
        self.reasons[name] = reason

    def __len__(self) -> int:
        return len(self.reasons)


class BadImage(Exception):
    """A file that is not a usable image; the message says which and why."""


# ------------------------------------------------------------------------------------------- decoding
def decode(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Tensor:
    """Encoded image bytes -> uint8 [3, H, W] RGB, or `BadImage`.

    The header is read first (Pillow, without decoding): an image of more than `max_pixels` pixels is
    refused before any memory is spent on it. PNGs are decoded by Pillow, which reports short pixel
    data as an error, where torchvision's libpng decoder crashes the process on it.
    """
    if not data:
        raise BadImage(f"{name}: empty file")
    size, image_format = _header(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadImage(f"{name}: {size[1]}x{size[0]} px is more than data.max_pixels ({max_pixels}) pixels")
    if image_format == "PNG" or data.startswith(PNG_SIGNATURE):
        image = _decode_pillow(data, name)
    else:
        try:
            image = _decode_torchvision(data)
        except (RuntimeError, ValueError):
            image = _decode_pillow(data, name)
    if min(image.shape[-2:]) < MIN_SIDE:
        raise BadImage(f"{name}: {image.shape[-2]}x{image.shape[-1]} px is smaller than {MIN_SIDE} px")
    return image


def _header(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), format) from the file's header, or (None, None) where Pillow cannot read it."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # hicl applies data.max_pixels itself, to the size read here
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil.size, pil.format
    except (OSError, ValueError, SyntaxError):
        return None, None


def _decode_torchvision(data: bytes) -> Tensor:
    from torchvision.io import ImageReadMode, decode_image

    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return to_uint8_rgb(image)


def _decode_pillow(data: bytes, name: str) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as pil:
            if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: Pillow's convert("RGB") clips instead of scaling, so scale first
                pil = pil.point(lambda v: v / 256).convert("L")
            array = torch.frombuffer(bytearray(pil.convert("RGB").tobytes()), dtype=torch.uint8)
            width, height = pil.size
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image in a format hicl can decode") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{name}: not a readable image ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    return array.view(height, width, 3).permute(2, 0, 1).contiguous()


def to_uint8_rgb(image: Tensor) -> Tensor:
    """Any decoded [C, H, W] (grey, grey+alpha, RGB, RGBA; 8 or 16 bits) -> uint8 [3, H, W]."""
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise BadImage(f"unsupported pixel type {image.dtype}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    channels = image.shape[0]
    if channels in (2, 4):  # drop alpha
        image = image[: channels - 1]
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadImage(f"{path}: cannot be read ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------- resizing
def resize(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 [C, H, W] -> uint8 [C, height, width], bilinear and antialiased (as torchvision's Resize)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    # uint8 in, uint8 out: torch has a vectorised kernel for exactly this (4x faster than via float32)
    return torch.nn.functional.interpolate(image.unsqueeze(0), size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0)


def fit_to_square(image: Tensor, side: int) -> tuple[Tensor, tuple[int, int]]:
    """(uint8 [3, side, side] with the image resized so its longer side is `side` at the top-left, (h, w))."""
    height, width = image.shape[-2:]
    scale = side / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    out = torch.zeros(3, side, side, dtype=torch.uint8)
    out[:, :h, :w] = resize(image, h, w)
    return out, (h, w)


def center_crop(image: Tensor, view_size: int, crop_pct: float) -> Tensor:
    """Resize the shorter side to view_size / crop_pct, then cut the centre view_size square."""
    height, width = image.shape[-2:]
    if (height, width) == (view_size, view_size):
        return image
    short = max(view_size, int(view_size / crop_pct))
    scale = short / min(height, width)
    h, w = max(view_size, round(height * scale)), max(view_size, round(width * scale))
    image = resize(image, h, w)
    top, left = (h - view_size) // 2, (w - view_size) // 2
    return image[:, top : top + view_size, left : left + view_size].contiguous()


def missing_files_error(source: str, root: Path, expected: list[str]) -> str:
    """The one-line message for a source whose files are not where the manifest says."""
    return f"data.root: {source} files not found in {root} (expected {', '.join(expected)})"
