"""Where one hierarchical SimSiam model step spends its time, hicl against the reference (torch.profiler).

Builds the same models and views as `benchmarks/reference_compare.py`, runs warm-up steps, then profiles
`--steps` steps of each implementation and prints, per step, the time of every part:

* forward of each part, from `record_function` ranges opened by forward hooks: backbone stage k (for
  hicl the stage runner's segment k; for the reference stem + layer1, layer2, ...), adapters, embeddings,
  projectors, predictors; `forward, other` is the rest of the forward (loss, concatenations, glue);
* backward of each part: every autograd node is charged to the part whose forward created it (the
  profiler's sequence numbers link the two); `backward, other` is what no part created (the loss);
* the optimiser step and `zero_grad`;

then the operators with the most self time. Example (the table in docs/results.md):

    python benchmarks/profile_step.py --reference ../Hierarchical-Augmentation --forwards separate,fused
"""

from __future__ import annotations

import argparse
import collections
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from reference_compare import PAPER_MANIFEST, hicl_model, load_reference, prepared_batches, reference_inputs, sgd

from hicl.augment.hierarchy import StageViews
from hicl.manifest import Manifest, load_manifest
from hicl.models.network import SSLModel
from hicl.train.device import keep_freed_memory

PART = "part: "


def label_modules(parts: dict[str, list[nn.Module]]) -> list:
    """Forward hooks that wrap each call of the listed modules in a `record_function(PART + label)`."""
    handles = []
    for label, modules in parts.items():
        for module in modules:
            ranges: list = []

            def enter(_m, _args, ranges=ranges, label=label) -> None:
                ranges.append(record_function(PART + label))
                ranges[-1].__enter__()

            def leave(_m, _args, _out, ranges=ranges) -> None:
                ranges.pop().__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def hicl_parts(model: SSLModel) -> dict[str, list[nn.Module]]:
    online = model.online
    parts = {f"backbone stage {k + 1}": list(segment) for k, segment in enumerate(online.runner._segments)}
    return parts | {"adapters": list(online.adapters), "embeddings": list(online.embedders.values()),
                    "projectors": list(online.projectors), "predictors": list(model.method.predictors)}


def reference_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    e = model.encoder
    return {
        "backbone stage 1": [e.conv1, e.bn1, e.relu, e.maxpool, e.layer1], "backbone stage 2": [e.layer2],
        "backbone stage 3": [e.layer3], "backbone stage 4": [e.layer4, e.scala4],
        "adapters": [getattr(e, f"{n}{k}") for k in (1, 2, 3) for n in ("prepare_attention", "attention", "scala")],
        "embeddings": [getattr(model, f"color_enc{k}") for k in (2, 3, 4)],
        "projectors": [getattr(model, f"projector{k}") for k in (1, 2, 3, 4)],
        "predictors": [getattr(model, f"predictor{k}") for k in (1, 2, 3, 4)],
    }


def profiled_step(loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    with record_function("step: forward"):
        value = loss()
    with record_function("step: zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with record_function("step: backward"):
        value.backward()
    with record_function("step: optimizer"):
        optimizer.step()


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def breakdown(events, steps: int) -> dict[str, float]:
    """Milliseconds per step of each part's forward and backward, the optimiser and the rest (CPU events)."""
    times: dict[str, float] = collections.defaultdict(float)
    created_by: dict[int, str] = {}
    labels = sorted((e for e in events if e.name.startswith(PART)), key=lambda e: -e.cpu_time_total)
    for event in labels:  # longest first, so that a nested part's label wins for its own nodes
        part = event.name[len(PART):]
        times[f"{part}, forward"] += event.cpu_time_total
        for op in _descendants(event):
            if op.sequence_nr >= 0:
                created_by[op.sequence_nr] = part
    for event in events:
        if event.name.startswith("step: "):
            times[f"{event.name[len('step: '):]} (total)"] += event.cpu_time_total
        elif event.name.startswith("autograd::engine::evaluate_function:"):
            times[f"{created_by.get(event.sequence_nr, 'other')}, backward"] += event.cpu_time_total
    times["forward, other"] = times["forward (total)"] - sum(v for k, v in times.items()
                                                             if k.endswith(", forward"))
    return {k: v / steps / 1000 for k, v in times.items()}


def profile_one(name: str, loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                parts: dict[str, list[nn.Module]], steps: int, top: int) -> dict[str, float]:
    profiled_step(loss, optimizer)  # warm-up: allocations and kernel choices happen here
    handles = label_modules(parts)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                profiled_step(loss, optimizer)
    finally:
        for handle in handles:
            handle.remove()
    print(f"\n{name}: operators with the most self time ({steps} steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return breakdown(prof.events(), steps)


def print_breakdown(results: dict[str, dict[str, float]]) -> None:
    keys = sorted({k for r in results.values() for k in r}, key=_order)
    print("\nms per step" + "".join(f" | {name}" for name in results))
    for key in keys:
        print(f"{key:<30}" + "".join(f" | {r.get(key, 0.0):10.1f}" for r in results.values()))


def _order(key: str) -> tuple:
    phase = 0 if "forward" in key else 1 if "backward" in key else 2
    return (phase, "(total)" in key, "other" in key, key)


def profile_reference(path: Path, manifest: Manifest, batch: StageViews, steps: int, top: int) -> dict[str, float]:
    resnet, builder = load_reference(path)
    model = builder.SimSiam(getattr(resnet, manifest.backbone.name)).train()
    views, colours = reference_inputs(batch)
    names = ["x1_1", "x1_2", "x2_1", "x2_2", "x3_1", "x3_2", "x4_1", "x4_2"]

    def loss() -> torch.Tensor:
        return model(**dict(zip(names, views)), color_enc=colours, epoch=0)["loss"]

    return profile_one("reference", loss, sgd(model, manifest), reference_parts(model), steps, top)


def profile_hicl(manifest: Manifest, forward: str, batch: StageViews, embed_dim: int, steps: int,
                 top: int) -> dict[str, float]:
    variant = manifest.model_copy(deep=True)
    variant.hierarchy.forward = forward
    model = hicl_model(variant, embed_dim, torch.device("cpu"))

    def loss() -> torch.Tensor:
        return model.total_loss(model.stage_losses(batch))

    return profile_one(f"hicl {forward}", loss, sgd(model, variant), hicl_parts(model), steps, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument("--manifest", default=PAPER_MANIFEST)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forwards", default="separate", help="hicl hierarchy.forward values to profile")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    manifest = load_manifest(args.manifest, [f"data.image_size={args.size}", f"optim.batch_size={args.batch}",
                                             "runtime.precision=fp32", "runtime.device=cpu", *args.overrides])
    if manifest.runtime.keep_freed_memory:  # process-wide, as in reference_compare: the reference gets it too
        keep_freed_memory()
    batch, _, embed_dim = prepared_batches(manifest, device)
    print(f"torch {torch.__version__}, cpu, {args.threads} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{manifest.backbone.name} {args.size} px, batch {args.batch}, fp32")
    results = {"reference": profile_reference(args.reference, manifest, batch, args.steps, args.top)}
    for forward in args.forwards.split(","):
        results[f"hicl {forward}"] = profile_hicl(manifest, forward, batch, embed_dim, args.steps, args.top)
    print_breakdown(results)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
