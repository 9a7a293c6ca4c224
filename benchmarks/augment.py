"""Views per second: the batched hicl augmentation against torchvision v2 applied image by image.

Rows (`--rows`, default all):

- `default`: the paper's views (AugmentConfig defaults: random resized crop with scale (0.2, 1), colour
  jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, blur p = 0.5 with sigma in (0.1, 2) and
  a kernel of 10% of the view, horizontal flip, normalisation);
- `byol`: BYOL's asymmetric pair (the default ops + solarize; view 1 blur p 1.0, solarize 0.0; view 2
  blur p 0.1, solarize 0.2), two views per image;
- `ops`: every registered op alone (applied with p = 1, its other settings the defaults), on sources
  already at the view size (the crop row resizes from the larger source).

Sources are uint8 images of size S * 8 / 7 (256 px for 224-px views, 36 px for 32-px views). hicl runs
on --device with whole batches; torchvision runs on CPU in a Python loop over the images of the batch,
as a DataLoader worker would (the ops on uint8, then uint8 -> float and normalisation).

    python benchmarks/augment.py --device cpu --batch 256 --sizes 32 224 --iters 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from hicl.augment import Pipeline
from hicl.augment.op import op_names
from hicl.augment.ops import default_blur_kernel_size
from hicl.manifest import AugmentConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BYOL_VIEWS = [{"blur": {"p": 1.0}, "solarize": {"p": 0.0}}, {"blur": {"p": 0.1}, "solarize": {"p": 0.2}}]


def _seconds_per_call(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Mean wall time of fn over `iters` calls after one warm-up call (synchronising CUDA around them)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def _rotation(p: float) -> v2.Transform:
    turns = [v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]
    return v2.RandomApply([v2.RandomChoice(turns)], p=p)


def torchvision_op(op: str, cfg: AugmentConfig, size: int) -> v2.Transform | None:
    """torchvision's per-image counterpart of one hicl op with the settings of `cfg` (None: it has none)."""
    section = getattr(cfg, op)
    kernel = getattr(section, "kernel_size", None) or default_blur_kernel_size(size)
    factories: dict[str, Callable[[], v2.Transform]] = {
        "crop": lambda: v2.RandomResizedCrop(size, scale=section.scale, ratio=section.ratio, antialias=True),
        "flip": lambda: v2.RandomHorizontalFlip(section.p),
        "rotation": lambda: _rotation(section.p),
        "color_jitter": lambda: v2.RandomApply(
            [v2.ColorJitter(section.brightness, section.contrast, section.saturation, section.hue)], p=section.p
        ),
        "grayscale": lambda: v2.RandomGrayscale(section.p),
        "blur": lambda: v2.RandomApply([v2.GaussianBlur(kernel, section.sigma)], p=section.p),
        "sharpness": lambda: v2.RandomAdjustSharpness(section.factor[1], p=section.p),
        "solarize": lambda: v2.RandomSolarize(section.threshold, p=section.p),
        "posterize": lambda: v2.RandomPosterize(section.bits, p=section.p),
        "equalize": lambda: v2.RandomEqualize(section.p),
        "gaussian_noise": lambda: v2.RandomApply([v2.GaussianNoise(sigma=section.sigma[1])], p=section.p),
        "erasing": lambda: v2.RandomErasing(section.p, scale=section.scale, ratio=section.ratio, value=section.value),
    }
    return factories[op]() if op in factories else None


def torchvision_compose(ops: list[str], cfg: AugmentConfig, size: int) -> v2.Compose:
    """The ops in hicl's order on the uint8 image (no crop: a resize to the view), then uint8 -> float and
    normalisation, as a DataLoader worker's transform would."""
    steps = [] if "crop" in ops else [v2.Resize([size, size], antialias=True)]
    steps += [torchvision_op(op, cfg, size) for op in ops]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.normalize.mean), list(cfg.normalize.std))]
    return v2.Compose(steps)


def _images(batch: int, source: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, source, source), dtype=torch.uint8).to(device)


def hicl_views_per_s(
    views: list[tuple[list[str], AugmentConfig]], size: int, source: int, batch: int, iters: int,
    device: torch.device, dtype: torch.dtype,
) -> float:
    """Views per second of hicl's pipelines, each making one view of every image of the batch."""
    pipelines = [Pipeline(ops, cfg, size, out_dtype=dtype) for ops, cfg in views]
    images = _images(batch, source, device)
    generator = torch.Generator(device=device).manual_seed(0)
    seconds = _seconds_per_call(lambda: [pipeline(images, generator) for pipeline in pipelines], iters, device)
    return batch * len(views) / seconds


def torchvision_views_per_s(
    views: list[tuple[list[str], AugmentConfig]], size: int, source: int, batch: int, iters: int
) -> float:
    """Views per second of torchvision v2 on CPU, image by image."""
    transforms = [torchvision_compose(ops, cfg, size) for ops, cfg in views]
    images = list(_images(batch, source, torch.device("cpu")))
    seconds = _seconds_per_call(
        lambda: [t(image) for image in images for t in transforms], iters, torch.device("cpu")
    )
    return batch * len(views) / seconds


def rows(which: list[str], size: int) -> list[tuple[str, list[tuple[list[str], AugmentConfig]], int]]:
    """(name, [(ops, cfg) per view], source size) of every row asked for."""
    source, out = size * 8 // 7, []
    default = AugmentConfig()
    if "default" in which:
        out.append(("default pipeline", [(default.ops, default)], source))
    if "byol" in which:
        byol = AugmentConfig(ops=[*default.ops, "solarize"], views=BYOL_VIEWS)
        out.append(("byol pair", [(byol.ops, byol.view(0)), (byol.ops, byol.view(1))], source))
    if "ops" in which:
        for op in op_names():
            cfg = default.model_copy(update={op: getattr(default, op).model_copy(update={"p": 1.0})}) \
                if "p" in type(getattr(default, op)).model_fields else default
            out.append((op, [([op], cfg)], source if op == "crop" else size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the hicl pipeline")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="view sizes in pixels")
    parser.add_argument("--iters", type=int, default=5, help="timed batches per measurement (after one warm-up)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="hicl output dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--rows", nargs="+", choices=("default", "byol", "ops"), default=["default", "byol", "ops"])
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, hicl on {name} ({args.dtype}), torchvision per image on cpu, "
          f"{torch.get_num_threads()} CPU threads, batch {args.batch}, {args.iters} timed batches")
    print(f"{'size':>5} {'row':<18} {'hicl views/s':>14} {'torchvision views/s':>20} {'ratio':>7}")
    for size in args.sizes:
        for label, views, source in rows(args.rows, size):
            ours = hicl_views_per_s(views, size, source, args.batch, args.iters, device, DTYPES[args.dtype])
            if any(torchvision_op(op, cfg, size) is None for ops, cfg in views for op in ops):
                print(f"{size:>5} {label:<18} {ours:>14.0f} {'-':>20} {'-':>7}", flush=True)
                continue
            theirs = torchvision_views_per_s(views, size, source, args.batch, args.iters)
            print(f"{size:>5} {label:<18} {ours:>14.0f} {theirs:>20.0f} {ours / theirs:>6.1f}x", flush=True)


if __name__ == "__main__":
    main()
