"""Training-step time of the hierarchy (add_one, 4 stages) against the plain method (off).

Times full steps (augmentation, forward, backward, optimiser) of SimSiam on random uint8 images for
`off`, `add_one` with `separate` forward and `add_one` with `fused` forward, and prints images/s and
the slow-down relative to `off`. Example (GPU): `python benchmarks/hierarchy_step.py --device cuda
--backbone resnet50 --size 224 --batch 128 --precision bf16`.
"""

from __future__ import annotations

import argparse
import time

import torch

from hicl.augment.hierarchy import StageAugmenter
from hicl.manifest import Manifest
from hicl.models.network import build_model
from hicl.train.device import autocast, view_dtype
from hicl.train.optim import build_optimizer

VARIANTS = {
    "off": {"mode": "off"},
    "add_one separate": {"mode": "add_one", "forward": "separate"},
    "add_one fused": {"mode": "add_one", "forward": "fused"},
}


def step_rate(args: argparse.Namespace, hierarchy: dict) -> float:
    manifest = Manifest.model_validate(
        {
            "name": "bench",
            "data": {"image_size": args.size},
            "backbone": {"name": args.backbone},
            "method": {"name": "simsiam", "proj_hidden_dim": args.proj, "proj_dim": args.proj},
            "hierarchy": {**hierarchy, "adapter": args.adapter, "bn": args.bn},
            "optim": {"batch_size": args.batch},
            "runtime": {"precision": args.precision},
        }
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, args.size, view_dtype(manifest.runtime))
    model = build_model(manifest, augmenter.embed_dim).to(device).train()
    optimizer = build_optimizer(manifest.optim, model, [])
    source = args.size * 8 // 7
    images = torch.randint(0, 256, (args.batch, 3, source, source), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        batch = augmenter(images, generator)
        with autocast(manifest.runtime, device):
            loss = model.total_loss(model.stage_losses(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="regnetx_002")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--proj", type=int, default=512)
    parser.add_argument("--adapter", default="sepconv", choices=["sepconv", "pool_linear", "reference"])
    parser.add_argument("--bn", default="joint", choices=["joint", "per_view"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; {args.backbone} {args.size} px, batch {args.batch}, {args.precision}, "
          f"adapter {args.adapter}, bn {args.bn}")
    rates = {name: step_rate(args, hierarchy) for name, hierarchy in VARIANTS.items()}
    print(f"{'variant':<18} {'img/s':>8} {'step time vs off':>17}")
    for name, rate in rates.items():
        print(f"{name:<18} {rate:8.1f} {rates['off'] / rate:16.2f}x")


if __name__ == "__main__":
    main()
