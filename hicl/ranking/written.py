"""The manifest `hicl rank-augmentations --write` produces: the input manifest with its hierarchy in the
measured order.

The file is the input manifest as written (the `--set` overrides and the pilots' settings are not
applied: they sized the pilots, not the run), with `hierarchy.mode: add_one`, `hierarchy.groups` =
the measured groups (most important first), `augment.ops` without the harmful ops, and every other
mention of a dropped op (embeddings, per-view recipes) removed. A comment block above it says what was
measured and why each dropped op went. The result is validated before this returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hicl.augment.op import canonical
from hicl.errors import HiclError
from hicl.manifest import load_manifest
from hicl.ranking.leave_one_out import Ranking, RankRequest
from hicl.ranking.stats import Interval
from hicl.safe_yaml import read_yaml_file


def _span(drop: Interval) -> str:
    if drop.n == 1:
        return f"{drop.mean:+.2f} points (one seed)"
    return f"{drop.mean:+.2f} points (95 % interval {drop.low:+.2f} to {drop.high:+.2f}, {drop.n} seeds)"


def header(request: RankRequest, ranking: Ranking) -> list[str]:
    """The comment lines above the written manifest."""
    sets = " ".join(f"--set {s}" for s in request.overrides) or "none"
    lines = [
        f"# hierarchy.groups measured by hicl rank-augmentations on {request.manifest} (head {ranking.head!r}, seeds "
        f"{' '.join(map(str, ranking.seeds))}, epochs {request.epochs or 'as the manifest'}, overrides: {sets}).",
        "# Drop = kNN top-1 of the full pipeline minus that without the op, most important first:"
        if ranking.metric == "knn_top1_drop" else
        "# Score = last-stage invariance the pilot gained over random init (invariance probe), most first:",
    ]
    lines += [f"#   {o.op}: {_span(o.drop)} -> {o.verdict}" for o in ranking.ops]
    lines += [f"# dropped {o.op}: harmful for this data, removing it raised kNN top-1 by {-o.drop.mean:.2f} points "
              f"(interval entirely above zero)" for o in ranking.harmful]
    return lines


def _without(items: list[str], dropped: set[str]) -> list[str]:
    return [op for op in items if op not in dropped]


def ranked_raw(raw: dict[str, Any], ranking: Ranking) -> dict[str, Any]:
    """The raw manifest with the measured hierarchy and without the harmful ops."""
    dropped = {o.op for o in ranking.harmful}
    raw = {**raw, "name": f"{raw.get('name', 'manifest')}_ranked"}
    augment = dict(raw.get("augment") or {})
    ops = augment.get("ops", [o.op for o in ranking.ops])
    augment["ops"] = canonical(_without(ops, dropped))
    if augment.get("views"):
        augment["views"] = [{op: v for op, v in view.items() if op not in dropped} for view in augment["views"]]
    hierarchy = {key: value for key, value in (raw.get("hierarchy") or {}).items() if key not in ("stages", "loss_weights")}
    hierarchy["mode"] = "add_one"
    hierarchy["groups"] = ranking.groups
    embeddings = dict(hierarchy.get("embeddings") or {})
    if "ops" in embeddings:
        embeddings["ops"] = _without(embeddings["ops"], dropped)
    if max(embeddings.get("stages") or [0]) > len(ranking.groups):
        del embeddings["stages"]  # the measured hierarchy has fewer stages than the one it names
    if embeddings:
        hierarchy["embeddings"] = embeddings
    output = raw.get("output")
    if isinstance(output, dict) and output.get("name"):
        raw["output"] = {**output, "name": f"{output['name']}_ranked"}
    return {**raw, "hierarchy": hierarchy, "augment": augment}


def write_ranked_manifest(request: RankRequest, ranking: Ranking, path: Path) -> Path:
    """Write the ranked manifest to `path` and check that it validates."""
    if not ranking.groups:
        raise HiclError("--write: every op was harmful for this data; there is no pipeline left to write")
    raw = read_yaml_file(request.manifest)
    text = "\n".join(header(request, ranking)) + "\n" + yaml.safe_dump(ranked_raw(raw, ranking), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    load_manifest(path)
    return path
