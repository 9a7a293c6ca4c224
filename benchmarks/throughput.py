"""Source images/s of one manifest: the model step alone and end to end, hierarchy off and add_one,
eager and compiled, in one process. Prints one table and writes JSON.

* model step: forward, backward, optimiser step and `after_optimizer_step` on views augmented once
  beforehand (the network's own speed);
* end to end: a uint8 batch from pinned host memory, copied to the device without blocking, then the
  augmentation of every stage's views on the device, then the step (what a training step costs).

A source image is one image of the dataset (each yields 2 views per stage). Example, the figure the
training-engine issue asks for on a GPU:

    python benchmarks/throughput.py manifests/quickstart.yaml --device cuda \
        --set backbone.name=resnet50 --set backbone.small_stem=false --set data.image_size=224 \
        --set optim.batch_size=128 --set runtime.precision=bf16 --set runtime.channels_last=true

The hierarchy variants: `off` (the plain method on the last stage) and `add_one` with the manifest's
groups (4 stages by default). Compiled variants use `runtime.compile`; graph breaks are counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hicl.augment.hierarchy import StageAugmenter
from hicl.manifest import Manifest, load_manifest
from hicl.models.network import build_model
from hicl.train.device import configure_host, graph_breaks, prepare_model, view_dtype
from hicl.train.loop import train_step
from hicl.train.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[int], None], batch: int, warmup: int, iters: int, device: torch.device) -> float:
    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        step(warmup + i)
    _sync(device)
    return batch * iters / (time.perf_counter() - start)


def measure(manifest: Manifest, device: torch.device, warmup: int, iters: int) -> dict:
    runtime = manifest.runtime
    batch_size = manifest.optim.batch_size
    torch.manual_seed(manifest.seed)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(runtime))
    model = prepare_model(build_model(manifest, augmenter.embed_dim), runtime, device).train()
    optimizer = build_optimizer(manifest.optim, model, model.method.fixed_lr_parameters())
    size = manifest.data.image_size
    # A few distinct host batches, pinned so that the copy can overlap the previous step.
    host = torch.randint(0, 256, (4, batch_size, 3, size, size), dtype=torch.uint8)
    host = host.pin_memory() if device.type == "cuda" else host
    generator = torch.Generator(device=device).manual_seed(manifest.seed)
    breaks_before = sum(graph_breaks().values())

    def step(batch) -> None:  # the training loop's own step
        train_step(model, model, optimizer, batch, manifest, device)
        model.after_optimizer_step(0, 1)

    fixed = augmenter(host[0].to(device), generator)
    model_step = _rate(lambda i: step(fixed), batch_size, warmup, iters, device)

    def end_to_end(i: int) -> None:
        images = host[i % host.shape[0]].to(device, non_blocking=True)
        step(augmenter(images, generator))

    e2e = _rate(end_to_end, batch_size, warmup, iters, device)
    breaks = sum(graph_breaks().values()) - breaks_before
    result = {"model_step": model_step, "end_to_end": e2e, "graph_breaks": breaks,
              "stages": manifest.hierarchy.num_stages}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--modes", default="off,add_one")
    parser.add_argument("--compile", default="eager,compiled", help="eager, compiled or both (comma-separated)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("throughput.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    base = load_manifest(args.manifest, [*args.overrides, f"runtime.device={args.device}"])
    configure_host(base.runtime)  # threads and allocator as `hicl pretrain` sets them
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    header = (f"torch {torch.__version__}, {where}; {base.method.name}, {base.backbone.name} "
              f"{base.data.image_size} px, batch {base.optim.batch_size}, {base.runtime.precision}, "
              f"channels_last {base.runtime.channels_last}")
    print(header, flush=True)
    rows = []
    for mode in args.modes.split(","):
        for kind in args.compile.split(","):
            manifest = base.model_copy(deep=True)
            manifest.hierarchy.mode = mode
            manifest.runtime.compile = kind == "compiled"
            rows.append({"mode": mode, "compile": kind, **measure(manifest, device, args.warmup, args.iters)})
            gc.collect()  # the variant's model, freed before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  {mode} {kind}: model step {rows[-1]['model_step']:.1f} img/s, "
                  f"end to end {rows[-1]['end_to_end']:.1f} img/s", flush=True)
    print(f"{'hierarchy':<10} {'':<9} {'stages':>6} {'model step img/s':>17} {'end to end img/s':>17} "
          f"{'graph breaks':>13}")
    for r in rows:
        print(f"{r['mode']:<10} {r['compile']:<9} {r['stages']:>6} {r['model_step']:17.1f} {r['end_to_end']:17.1f} "
              f"{r['graph_breaks']:>13}")
    args.json.write_text(json.dumps({"setup": header, "manifest": str(args.manifest), "overrides": args.overrides,
                                     "warmup": args.warmup, "iters": args.iters, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
