"""`hicl probe-invariance` end to end: probe one or two targets on the same held-out images, then write
the table, `invariance.json`, `invariance.csv` and `invariance.png` (see `hicl.evaluate.invariance`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hicl.data.fingerprint import tensor_fingerprint
from hicl.data.loader import load_split
from hicl.errors import HiclError
from hicl.evaluate.features import StageFeatures
from hicl.evaluate.invariance import NUM_BINS, SHRINKAGE, ProbeResult, probe_invariance
from hicl.evaluate.probe_target import ProbeTarget
from hicl.evaluate.provenance import provenance
from hicl.plots import save_invariance_heatmap
from hicl.train.device import resolve_device


@dataclass
class ProbedTarget:
    target: ProbeTarget
    result: ProbeResult
    record: dict[str, Any]


MIN_IMAGES = 8  # fewer leave the predictability classifier nothing to test on


def probe_targets(
    targets: list[ProbeTarget], stages: list[str] | None, num_images: int, console: Console
) -> list[ProbedTarget]:
    """Probe every target with the first target's data, augmentation strengths, view size and seed."""
    base = targets[0].manifest
    device = resolve_device(base.runtime)
    # a fixed spread-out subset (every class of a sorted folder), not the whole split
    test = load_split(base.data.model_copy(update={"max_images": min(num_images, base.data.max_images or num_images)}), "test")
    if len(test) < MIN_IMAGES:
        raise HiclError(f"the test split has {len(test)} images; the probe needs at least {MIN_IMAGES}")
    if num_images > len(test):  # a small set is probed whole rather than refused
        console.print(f"probe: the test split has {len(test)} images, fewer than the {num_images} asked for; using all {len(test)}")
        num_images = len(test)
    images = test.images[:num_images]
    probed = []
    for target in targets:
        features = StageFeatures(target.backbone, target.manifest.backbone.name, base.view_size).to(device)
        chosen = features.resolve(stages)
        with console.status(f"probing {target.label}: {len(chosen)} stages, {num_images} images"):
            result = probe_invariance(features, images.to(device), base.augment, base.view_size, chosen, seed=base.seed)
        protocol = {
            "name": "invariance-probe", "images": num_images, "view_size": base.view_size, "seed": base.seed,
            "shrinkage": SHRINKAGE, "bins": NUM_BINS, "augment": base.augment.model_dump(mode="json"),
        }
        record = {
            "label": target.label,
            "model": target.manifest.backbone.name,
            **provenance(target.manifest, target.weights_sha256, {"test": tensor_fingerprint(images)}, protocol),
            "stages": result.stages,
            "ops": result.ops,
            "skipped_ops": result.skipped,
            "cells": [c.record() for c in result.cells],
            "effective_rank": result.effective_rank,
        }
        probed.append(ProbedTarget(target, result, record))
    if len(probed) == 2 and probed[0].result.stages != probed[1].result.stages:
        raise HiclError(
            f"--compare: the two models have different stages ({', '.join(probed[0].result.stages)} vs "
            f"{', '.join(probed[1].result.stages)}); pick common ones with --stages"
        )
    return probed


def difference(a: ProbeResult, b: ProbeResult) -> list[dict[str, Any]]:
    """b - a for every (stage, op) both have."""
    return [
        {
            "stage": ca.stage, "op": ca.op,
            "invariance": b.cell(ca.stage, ca.op).invariance - ca.invariance,
            "over_chance": b.cell(ca.stage, ca.op).over_chance - ca.over_chance,
        }
        for ca in a.cells
        if ca.op in b.ops
    ]


def write_outputs(probed: list[ProbedTarget], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"targets": [p.record for p in probed]}
    if len(probed) == 2:
        data["difference"] = {"of": f"{probed[1].target.label} - {probed[0].target.label}"}
        data["difference"]["cells"] = difference(probed[0].result, probed[1].result)
    paths = [out / "invariance.json", out / "invariance.csv", out / "invariance.png"]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    fields = ["target", "stage", "op", "invariance", "invariance_ci95", "invariance_n", "unrelated",
              "predictability", "chance", "over_chance", "predictability_n", "classes"]
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for p in probed:
            for cell in p.record["cells"]:
                writer.writerow({"target": p.target.label, **{k: cell[k] for k in fields[1:]}})
    save_invariance_heatmap([(p.target.label, p.result) for p in probed], paths[2])
    return paths


def render_probe(probed: ProbedTarget) -> Table:
    """Ops down, stages across; each cell: invariance (+- CI) over predictability over chance."""
    result = probed.result

    def cell_text(stage: str, op: str) -> str:
        cell = result.cell(stage, op)
        return f"{cell.invariance:.2f}±{cell.invariance_ci95:.2f}\n{100 * cell.over_chance:+.0f}%"

    title = (f"{probed.target.label}: invariance ± 95% CI / predictability over chance "
             f"({result.num_images} images; classifier tested on {result.cells[0].predictability_n})")
    table = _ops_down(title, result.stages, result.ops, cell_text)
    if result.effective_rank:  # a collapsed stage shows as a rank near 1
        table.add_row("effective rank", *(f"{result.effective_rank[s]:.1f}" for s in result.stages), end_section=True)
    return table


def render_difference(a: ProbedTarget, b: ProbedTarget) -> Table:
    cells = {(d["stage"], d["op"]): d for d in difference(a.result, b.result)}

    def cell_text(stage: str, op: str) -> str:
        return f"{cells[stage, op]['invariance']:+.2f}\n{100 * cells[stage, op]['over_chance']:+.0f}%"

    title = f"{b.target.label} - {a.target.label}: Δ invariance / Δ predictability over chance"
    return _ops_down(title, a.result.stages, a.result.ops, cell_text)


def _ops_down(title: str, stages: list[str], ops: list[str], cell_text: Callable[[str, str], str]) -> Table:
    # ops as rows: a model has 4-5 stages but a probe has up to a dozen ops, so this fits 80 columns
    table = Table(title=title)
    table.add_column("op")
    for stage in stages:
        table.add_column(stage, justify="right")
    for op in ops:
        table.add_row(op, *(cell_text(stage, op) for stage in stages))
    return table


def default_out(target: ProbeTarget) -> Path:
    return target.results if target.results is not None else Path("probe") / target.manifest.name



