"""Decoded source images per second per worker: hicl's loader against the usual torchvision pipeline.

Writes --images JPEGs of about 500 x 375 px (random sizes around it, quality 90) into a temporary
ImageFolder and reads them, in this process with one thread (what one DataLoader worker does):

- hicl: decode (torchvision.io) and fit the longer side to --load-size, padded to a square; every
  augmentation then runs batched on the training device (see benchmarks/augment.py for that part);
- torchvision: `ImageFolder` + PIL + the two-view SimSiam transform (RandomResizedCrop(224, (0.2, 1)),
  ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale 0.2, GaussianBlur p=0.5, flip, ToTensor,
  Normalize) applied twice, as a worker of a plain SimSiam/MoCo pipeline does;
- torchvision, decode and resize only: `ImageFolder` + PIL + Resize(--load-size) + PILToTensor, the
  same work as hicl's worker done the usual way (to tell the decoder's share from the augmentations').

    python benchmarks/data.py --images 1000 --load-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from torchvision.io import encode_jpeg

from hicl.data.base import fit_to_square
from hicl.data.loader import _collate, _Files
from hicl.data.source import FileSplit


def write_jpegs(root: Path, count: int) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        height = 375 + int(torch.randint(-40, 41, (1,), generator=generator))
        width = 500 + int(torch.randint(-60, 61, (1,), generator=generator))
        # smooth colour fields plus noise: compresses like a photograph rather than like white noise
        base = torch.rand(3, height // 16 + 1, width // 16 + 1, generator=generator)
        image = torch.nn.functional.interpolate(base[None], size=(height, width), mode="bilinear")[0]
        image = (image * 200 + torch.rand(3, height, width, generator=generator) * 55).to(torch.uint8)
        path = root / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(encode_jpeg(image, quality=90).numpy()))
        paths.append(path)
    return sorted(paths)


def two_view_transform(view_size: int) -> T.Compose:
    view = T.Compose([
        T.RandomResizedCrop(view_size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    return T.Lambda(lambda image: (view(image), view(image)))


def images_per_second(loader: DataLoader, count: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--load-size", type=int, default=256)
    parser.add_argument("--view-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's share

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        mean_bytes = sum(p.stat().st_size for p in paths) / len(paths)
        hicl_files = _Files(FileSplit(paths, {}, {}), lambda image: fit_to_square(image, args.load_size))
        hicl_loader = DataLoader(hicl_files, batch_size=args.batch, collate_fn=_collate, num_workers=0)
        folder = datasets.ImageFolder(tmp, transform=two_view_transform(args.view_size))
        tv_loader = DataLoader(folder, batch_size=args.batch, num_workers=0)
        hicl_rate = max(images_per_second(hicl_loader, len(paths)) for _ in range(args.repeats))
        tv_rate = max(images_per_second(tv_loader, len(paths)) for _ in range(args.repeats))
        resize_only = datasets.ImageFolder(tmp, transform=T.Compose([T.Resize(args.load_size), T.PILToTensor()]))
        resize_loader = DataLoader(resize_only, batch_size=1, num_workers=0)  # sizes differ: no stacking
        resize_rate = max(images_per_second(resize_loader, len(paths)) for _ in range(args.repeats))

    result = {
        "images": args.images, "mean_jpeg_bytes": round(mean_bytes), "load_size": args.load_size,
        "hicl_images_per_s_per_worker": round(hicl_rate, 1),
        "torchvision_two_view_images_per_s_per_worker": round(tv_rate, 1),
        "torchvision_decode_resize_images_per_s_per_worker": round(resize_rate, 1),
        "ratio": round(hicl_rate / tv_rate, 2),
        "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
        "torch": torch.__version__,
    }
    print(f"{args.images} JPEGs (~500x375, {mean_bytes / 1024:.0f} KiB), one thread:")
    print(f"  hicl decode + fit to {args.load_size}:        {hicl_rate:8.1f} images/s")
    print(f"  torchvision ImageFolder + PIL + 2 views: {tv_rate:8.1f} images/s")
    print(f"  torchvision ImageFolder + PIL + Resize:  {resize_rate:8.1f} images/s")
    print(f"  ratio to the two-view pipeline: {hicl_rate / tv_rate:.2f}x   (load average {os.getloadavg()[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
