"""`hicl runs`: what every run under a folder is and how far it got, read from its files (no torch).

State: `running` while a process holds the run lock; else the outcome the last session recorded
(`outcome.json`: finished, stopped, collapsed, diverged, failed); `interrupted` for a run killed outright (no
outcome); `new` for one without a checkpoint or outcome yet.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hicl.errors import HiclError
from hicl.lock import lock_holder
from hicl.safe_yaml import read_yaml_file

OUTCOME = "outcome.json"
MANIFEST = "manifest.yaml"


def check_run_target(target: Path) -> None:
    """`target` is a run directory (with its manifest.yaml) or a manifest file; else a one-line error,
    found before a command imports torch."""
    if not target.exists():
        raise HiclError(f"{target}: no such run directory or manifest")
    if target.is_dir() and not (target / MANIFEST).is_file():
        raise HiclError(f"{target}: not a hicl run directory (no {MANIFEST})")


@dataclass(frozen=True)
class RunSummary:
    """One row of `hicl runs`."""

    name: str
    path: str
    method: str
    backbone: str
    hierarchy: str
    data: str
    epochs_done: int
    epochs_planned: int
    state: str
    final_loss: float | None
    linear_top1: float | None
    knn_top1: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _top1(result: dict[str, Any] | None) -> float | None:
    """The pretrained backbone's top-1 on the first label head of a linear_eval.json / knn.json."""
    heads = (result or {}).get("heads") or {}
    first = next(iter(heads.values()), {}) if isinstance(heads, dict) else {}
    value = first.get("pretrained", {}).get("top1") if isinstance(first, dict) else None
    return value if isinstance(value, (int, float)) else None


def _metrics(path: Path) -> tuple[float | None, float | None]:
    """(the last logged loss, the last kNN-monitor top-1) of metrics.jsonl, read line by line."""
    loss = knn = None
    try:
        lines = path.open(errors="replace")
    except OSError:
        return None, None
    with lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("loss"), (int, float)):
                loss = record["loss"]
            if record.get("kind") == "knn" and isinstance(record.get("top1"), (int, float)):
                knn = record["top1"]
    return loss, knn


def _state(run: Path, outcome: dict[str, Any] | None, has_checkpoint: bool) -> str:
    if lock_holder(run) is not None:
        return "running"
    if outcome is not None and isinstance(outcome.get("state"), str):
        return outcome["state"]
    return "interrupted" if has_checkpoint else "new"


def summarize_run(run: Path) -> RunSummary:
    """The row of one run directory."""
    manifest = read_yaml_file(run / MANIFEST)
    if not isinstance(manifest, dict):
        raise HiclError(f"{run / MANIFEST}: not a manifest")

    def field(section: str, key: str, default: Any = "?") -> Any:
        value = manifest.get(section)
        return value.get(key, default) if isinstance(value, dict) else default

    meta = _json(run / "checkpoints" / "last" / "meta.json") or _json(run / "checkpoints" / "last.old" / "meta.json")
    outcome = _json(run / OUTCOME)
    loss, knn_monitor = _metrics(run / "metrics.jsonl")
    if outcome is not None and isinstance(outcome.get("loss"), (int, float)):
        loss = outcome["loss"]
    knn = _top1(_json(run / "results" / "knn.json"))
    return RunSummary(
        name=run.name, path=str(run), method=str(field("method", "name")), backbone=str(field("backbone", "name")),
        hierarchy=str(field("hierarchy", "mode")), data=str(field("data", "source")),
        epochs_done=int(meta.get("epoch", 0)) if meta else 0, epochs_planned=int(field("schedule", "epochs", 0)),
        state=_state(run, outcome, meta is not None),
        final_loss=loss if loss is None or math.isfinite(loss) else None,
        linear_top1=_top1(_json(run / "results" / "linear_eval.json")),
        knn_top1=knn if knn is not None else knn_monitor,
    )


def list_runs(folder: Path) -> list[RunSummary]:
    """Every run directory directly under `folder` (or `folder` itself when it is one), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HiclError(f"{folder}: no such folder of runs")
    if (folder / MANIFEST).is_file():
        return [summarize_run(folder)]
    return [summarize_run(p) for p in sorted(folder.iterdir()) if (p / MANIFEST).is_file()]


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """The manifest keys whose values differ (dotted key -> [a's, b's]) and both runs' rows."""
    flat = [_flatten(read_yaml_file(Path(run) / MANIFEST)) for run in (a, b)]
    keys = sorted(set(flat[0]) | set(flat[1]))
    differ = {k: [flat[0].get(k), flat[1].get(k)] for k in keys if flat[0].get(k) != flat[1].get(k) and k != "name"}
    return {"manifest": differ, "runs": [summarize_run(Path(a)).as_dict(), summarize_run(Path(b)).as_dict()]}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_runs(summaries: list[RunSummary]):
    """The `hicl runs` table (rich)."""
    from rich.table import Table

    table = Table(title="runs")
    for column in ("name", "method", "backbone", "hierarchy", "data", "epochs", "state", "loss", "linear %", "kNN %"):
        table.add_column(column, justify="right" if column in ("epochs", "loss", "linear %", "kNN %") else "left")
    for s in summaries:
        table.add_row(s.name, s.method, s.backbone, s.hierarchy, s.data, f"{s.epochs_done}/{s.epochs_planned}", s.state,
                      _cell(s.final_loss), _cell(s.linear_top1, True), _cell(s.knn_top1, True))
    return table


def render_comparison(compared: dict[str, Any]):
    """`hicl runs --compare`: the differing manifest keys, then both runs' rows."""
    from rich.table import Table

    a, b = compared["runs"]
    keys = Table(title="manifest difference")
    for column in ("key", a["name"], b["name"]):
        keys.add_column(column)
    for key, (left, right) in compared["manifest"].items():
        keys.add_row(key, _cell(left), _cell(right))
    rows = render_runs([RunSummary(**a), RunSummary(**b)])
    return keys, rows
