"""Views per second: the batched hicl augmentation pipeline against torchvision v2 applied image by image.

Both make the paper's views (AugmentConfig defaults: random resized crop with scale (0.2, 1), colour jitter
(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, blur p = 0.5 with sigma in (0.1, 2) and a kernel of
10% of the view, horizontal flip, normalisation) from uint8 sources of size S * 8 / 7 (256 px for 224-px
views, 36 px for 32-px views). hicl runs on --device with whole batches; torchvision runs on CPU in a
Python loop over the images of the batch, as a DataLoader worker would.

    python benchmarks/augment.py --device cpu --batch 256 --sizes 32 224 --iters 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from hicl.augment import Pipeline
from hicl.augment.ops import default_blur_kernel_size
from hicl.manifest import AugmentConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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


def hicl_views_per_s(size: int, batch: int, iters: int, device: torch.device, dtype: torch.dtype) -> float:
    cfg = AugmentConfig()
    pipeline = Pipeline(cfg.ops, cfg, size, out_dtype=dtype)
    source = size * 8 // 7
    images = torch.randint(0, 256, (batch, 3, source, source), dtype=torch.uint8).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    return batch / _seconds_per_call(lambda: pipeline(images, generator), iters, device)


def torchvision_views_per_s(size: int, batch: int, iters: int) -> float:
    cfg = AugmentConfig()
    jitter = cfg.color_jitter
    kernel = default_blur_kernel_size(size)
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop.scale, ratio=cfg.crop.ratio, antialias=True),
            v2.RandomApply(
                [v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)], p=jitter.p
            ),
            v2.RandomGrayscale(cfg.grayscale.p),
            v2.RandomApply([v2.GaussianBlur(kernel, cfg.blur.sigma)], p=cfg.blur.p),
            v2.RandomHorizontalFlip(cfg.flip.p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(cfg.normalize.mean), list(cfg.normalize.std)),
        ]
    )
    source = size * 8 // 7
    images = list(torch.randint(0, 256, (batch, 3, source, source), dtype=torch.uint8))
    cpu = torch.device("cpu")
    return batch / _seconds_per_call(lambda: [transform(image) for image in images], iters, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the hicl pipeline")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="view sizes in pixels")
    parser.add_argument("--iters", type=int, default=5, help="timed batches per measurement (after one warm-up)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="hicl output dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, hicl on {name} ({args.dtype}), torchvision per image on cpu, "
          f"{torch.get_num_threads()} CPU threads, batch {args.batch}, {args.iters} timed batches")
    print(f"{'size':>5} {'hicl views/s':>14} {'torchvision views/s':>20} {'ratio':>7}")
    for size in args.sizes:
        ours = hicl_views_per_s(size, args.batch, args.iters, device, DTYPES[args.dtype])
        theirs = torchvision_views_per_s(size, args.batch, args.iters)
        print(f"{size:>5} {ours:>14.0f} {theirs:>20.0f} {ours / theirs:>6.1f}x")


if __name__ == "__main__":
    main()
