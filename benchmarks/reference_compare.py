"""Model-step images/s of hicl against the reference implementation, side by side in one process.

`--reference PATH` is a local checkout of the reference repository (zhangjb416/Hierarchical-Augmentation;
nothing is fetched): its `resnet_imagenet.py` and `simsiam_base/builder.py` are loaded from there. Both
implementations get the same device, batch, view size and SGD settings, and the same views, made once
beforehand by hicl's augmentation from random images (so only the model step is timed: forward,
backward, optimiser step). Variants:

* `reference hierarchical`: the reference SimSiam (4 stages, its adapters, colour embeddings on
  stages 2-4), one network call per view, as its `main_train.py` does;
* `reference plain`: the reference ResNet's last stage with its projector and predictor (plain SimSiam);
* `hicl <forward>`: the manifest (default: the paper's ResNet-50 SimSiam: add_one, reference adapter,
  per-view BN, colour embeddings) with each `--forwards` value of `hierarchy.forward`;
* `hicl plain`: the same manifest with `hierarchy.mode: off`.

Every round times every variant once (warm-up steps first), in turn, so that a change of the shared
machine's load hits all of them alike; the table gives each round's figure, the median and the ratio of
medians to the reference, for wall time and for this process's CPU time (on a machine shared with
other jobs the second is the steadier one; use `--threads 1` there). Example (docs/results.md):

    python benchmarks/reference_compare.py --reference ../Hierarchical-Augmentation --rounds 2 --iters 1 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hicl.augment.hierarchy import StageAugmenter, StageViews
from hicl.manifest import Manifest, load_manifest
from hicl.models.network import SSLModel, build_model
from hicl.train.device import keep_freed_memory, prepare_model, view_dtype
from hicl.train.optim import build_optimizer

PAPER_MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "paper" / "simsiam_resnet50_224px.yaml"
Step = Callable[[], None]


def load_reference(path: Path) -> tuple[ModuleType, ModuleType]:
    """The reference's `resnet_imagenet` and `simsiam_base.builder` modules, loaded from the checkout."""
    modules = []
    files = (("reference_resnet", "resnet_imagenet.py"), ("reference_builder", "simsiam_base/builder.py"))
    for name, relative in files:
        file = path / relative
        if not file.is_file():
            raise SystemExit(f"--reference: {file} does not exist (expected a checkout of the reference repository)")
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


class ReferencePlain(nn.Module):
    """Plain SimSiam from the reference's parts: its ResNet to the last stage and a projector and predictor
    on the pooled feature alone (its `projector1` / `predictor1`, which take no embedding)."""

    def __init__(self, hierarchical: nn.Module, loss: Callable):
        super().__init__()
        self.encoder = hierarchical.encoder
        self.projector, self.predictor = hierarchical.projector1, hierarchical.predictor1
        self.loss = loss

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = (self.projector(self.encoder(x, level=4)[-1]) for x in (x_a, x_b))
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        return self.loss(p_a, z_b) / 2 + self.loss(p_b, z_a) / 2


def reference_inputs(batch: StageViews) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """hicl's stage views as the reference's eight view batches and six colour vectors (stages 2-4)."""
    views = [v for stage in batch.views for v in stage.chunk(2)]
    colours = [c for vec in batch.param_vectors[1:] for c in vec.chunk(2)]
    return views, colours


def sgd(model: nn.Module, manifest: Manifest) -> torch.optim.Optimizer:
    cfg = manifest.optim
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def reference_steps(path: Path, manifest: Manifest, batch: StageViews, device: torch.device,
                    channels_last: bool = False) -> dict[str, Step]:
    """Model steps of the reference's hierarchical SimSiam and of plain SimSiam from its parts
    (`channels_last`: weights and views in NHWC memory format, a change the reference does not make)."""
    resnet, builder = load_reference(path)
    arch = getattr(resnet, manifest.backbone.name, None)
    if arch is None:
        raise SystemExit(f"backbone.name: the reference has no {manifest.backbone.name!r}")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    hierarchical = builder.SimSiam(arch).to(device, memory_format=layout).train()
    plain = ReferencePlain(builder.SimSiam(arch), builder.D).to(device, memory_format=layout).train()
    views, colours = reference_inputs(batch)
    views = [v.contiguous(memory_format=layout) for v in views]

    def step(optimizer: torch.optim.Optimizer, loss: Callable[[], torch.Tensor]) -> Step:
        def run() -> None:
            value = loss()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        return run

    names = ["x1_1", "x1_2", "x2_1", "x2_2", "x3_1", "x3_2", "x4_1", "x4_2"]
    suffix = " channels_last" if channels_last else ""
    return {
        f"reference hierarchical{suffix}": step(
            sgd(hierarchical, manifest),
            lambda: hierarchical(**dict(zip(names, views)), color_enc=colours, epoch=0)["loss"]),
        f"reference plain{suffix}": step(sgd(plain, manifest), lambda: plain(views[-2], views[-1])),
    }


def hicl_model(manifest: Manifest, embed_dim: int, device: torch.device) -> SSLModel:
    torch.manual_seed(manifest.seed)
    return prepare_model(build_model(manifest, embed_dim), manifest.runtime, device).train()


def hicl_step(model: SSLModel, manifest: Manifest, batch: StageViews) -> Step:
    """The training loop's model step in fp32: stage losses, weighted sum, backward, SGD step."""
    optimizer = sgd(model, manifest)

    def run() -> None:
        loss = model.total_loss(model.stage_losses(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def hicl_steps(manifest: Manifest, batch: StageViews, plain_batch: StageViews, embed_dim: int, device: torch.device,
               forwards: list[str], channels_last: bool) -> dict[str, Step]:
    """hicl's hierarchical step with each `hierarchy.forward`, and the plain one, with the manifest's
    `runtime.channels_last` or the one given."""
    steps = {}
    suffix = " channels_last" if channels_last else ""
    for forward in forwards:
        variant = manifest.model_copy(deep=True)
        variant.hierarchy.forward = forward
        variant.runtime.channels_last = channels_last
        steps[f"hicl {forward}{suffix}"] = hicl_step(hicl_model(variant, embed_dim, device), variant, batch)
    plain = manifest.model_copy(deep=True)
    plain.hierarchy.mode = "off"
    plain.runtime.channels_last = channels_last
    steps[f"hicl plain{suffix}"] = hicl_step(hicl_model(plain, 0, device), plain, plain_batch)
    return steps


def prepared_batches(manifest: Manifest, device: torch.device) -> tuple[StageViews, StageViews, int]:
    """The hierarchical batch (4 stages, colour vectors at stages 2-4), the plain batch (its last stage's
    views) and the embedding input width, augmented once from random images."""
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    generator = torch.Generator(device=device).manual_seed(manifest.seed)
    size = manifest.data.image_size
    images = torch.randint(0, 256, (manifest.optim.batch_size, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(manifest.seed)).to(device)
    batch = augmenter(images, generator)
    plain = StageViews(views=batch.views[-1:], params=batch.params[-1:], param_vectors=[None])
    return batch, plain, augmenter.embed_dim


def rate(step: Step, images: int, warmup: int, iters: int, device: torch.device) -> tuple[float, float]:
    """(images per second of wall time, images per second of this process's CPU time)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images * iters / (time.perf_counter() - wall), images * iters / (time.process_time() - cpu)


def print_table(rates: dict[str, list[float]], title: str) -> None:
    """Each round's figure, the median and min-max spread, and the median's ratio to the reference's."""
    print(title)
    rounds = len(next(iter(rates.values())))
    print(f"{'variant':<34} " + " ".join(f"{'round ' + str(i + 1):>8}" for i in range(rounds))
          + f" {'median':>8} {'spread':>7} {'vs reference':>13}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        base = medians["reference plain" if "plain" in name else "reference hierarchical"]
        spread = (max(values) - min(values)) / medians[name]
        print(f"{name:<34} " + " ".join(f"{v:8.2f}" for v in values) + f" {medians[name]:8.2f} {spread:6.0%} "
              f"{medians[name] / base:12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="local checkout of the reference repository")
    parser.add_argument("--manifest", type=Path, default=PAPER_MANIFEST)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--size", type=int, default=128, help="data.image_size (the view size)")
    parser.add_argument("--batch", type=int, default=16, help="source images per step (2 views per stage each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forwards", default="separate,fused", help="hicl hierarchy.forward values to time")
    parser.add_argument("--layouts", default="manifest", help="hicl memory formats: manifest (its "
                        "runtime.channels_last), channels_last, or both comma-separated")
    parser.add_argument("--reference-channels-last", action="store_true",
                        help="also time the reference with NHWC weights and views")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = [f"data.image_size={args.size}", f"optim.batch_size={args.batch}", "runtime.precision=fp32",
                 f"runtime.device={args.device}", *args.overrides]
    manifest = load_manifest(args.manifest, overrides)
    if manifest.runtime.keep_freed_memory:  # process-wide: the reference's steps get it too
        keep_freed_memory()
    batch, plain_batch, embed_dim = prepared_batches(manifest, device)
    steps = reference_steps(args.reference, manifest, batch, device)
    if args.reference_channels_last:
        steps |= reference_steps(args.reference, manifest, batch, device, channels_last=True)
    for layout in args.layouts.split(","):
        channels_last = manifest.runtime.channels_last if layout == "manifest" else layout == "channels_last"
        steps |= hicl_steps(manifest, batch, plain_batch, embed_dim, device, args.forwards.split(","), channels_last)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    header = (f"torch {torch.__version__}, {where}, load average {os.getloadavg()[0]:.1f} at start; SimSiam "
              f"{manifest.backbone.name} {args.size} px, batch {args.batch}, fp32; hicl hierarchy: adapter "
              f"{manifest.hierarchy.adapter}, bn {manifest.hierarchy.bn}"
              f"{'; glibc keeps freed memory (both)' if manifest.runtime.keep_freed_memory else ''}")
    print(header, file=sys.stderr, flush=True)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name, step in steps.items():
            rates = rate(step, args.batch, args.warmup, args.iters, device)
            wall[name].append(rates[0])
            cpu[name].append(rates[1])
            print(f"  round {round_index + 1} {name}: {rates[0]:.2f} img/s, {rates[1]:.2f} img per CPU-s "
                  f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    print(header + f", load average {os.getloadavg()[0]:.1f} at end")
    print_table(wall, "img/s (wall time)")
    print_table(cpu, "img per CPU-second of this process (less sensitive to other processes on the machine)")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "wall": wall, "cpu": cpu}, indent=2) + "\n")


if __name__ == "__main__":
    main()
