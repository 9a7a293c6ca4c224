"""Figures a table would make hard to read; written as PNG next to the numbers they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines

from matplotlib.figure import Figure  # noqa: E402


def loss_figure(records: list[dict[str, Any]]) -> Figure:
    """Total loss and the loss of every stage against the step, from metrics.jsonl step records."""
    steps = [r for r in records if r["kind"] == "step"]
    figure = Figure(figsize=(7, 4), dpi=120)
    axes = figure.add_subplot()
    x = [r["step"] for r in steps]
    if len(steps[0]["stage_losses"]) > 1:
        axes.plot(x, [r["loss"] for r in steps], color="black", label="total (weighted)")
    for k in range(len(steps[0]["stage_losses"])):
        axes.plot(x, [r["stage_losses"][k] for r in steps], label=f"stage {k + 1}")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def save_loss_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """The loss figure as PNG; None (nothing written) when there are no step records to show."""
    if not any(r.get("kind") == "step" for r in records):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_figure(records).savefig(path)
    return path
