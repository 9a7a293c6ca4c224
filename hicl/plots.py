"""Figures a table would make hard to read; written as PNG next to the numbers they show."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines

from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from hicl.evaluate.invariance import ProbeResult


FEW_POINTS = 20  # below this many records a curve also marks each one (a single record has no line to draw)


def _marker(points: int) -> str | None:
    return "o" if points < FEW_POINTS else None


def training_figure(records: list[dict[str, Any]]) -> Figure:
    """From metrics.jsonl: total and per-stage loss (each logged step, and each epoch's mean), the learning
    rate, and when the run has them, each stage's spread (the collapse monitor's; 0 is collapsed) and kNN
    top-1, each against the step (one panel each, sharing the step axis). A short run's few records are
    drawn as points."""
    steps = [r for r in records if r["kind"] == "step"]
    health = [r for r in steps if "spread" in r]
    knn = [r for r in records if r["kind"] == "knn"]
    ratios = [3, 1] + [1.5] * bool(health) + [1.5] * bool(knn)
    figure = Figure(figsize=(7, 3.5 + 1.1 * sum(ratios[1:])), dpi=120)
    panels = list(figure.subplots(len(ratios), 1, sharex=True, height_ratios=ratios))
    x, marker = [r["step"] for r in steps], _marker(len(steps))
    _loss_panel(panels[0], steps, [r for r in records if r["kind"] == "epoch"], marker)
    panels[1].plot(x, [r["lr"] for r in steps], color="tab:gray", marker=marker, markersize=3)
    panels[1].set_ylabel("lr")
    if health:
        axes = panels[2]
        for k in range(len(health[0]["spread"])):
            axes.plot([r["step"] for r in health], [r["spread"][k] for r in health], marker=_marker(len(health)),
                      markersize=3, label=f"stage {k + 1}")
        axes.set_ylabel("spread")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=7)
    if knn:
        panels[-1].plot([r["step"] for r in knn], [100 * r["top1"] for r in knn], marker="o")
        panels[-1].set_ylabel(f"kNN top-1 % ({knn[-1]['head']})")
    panels[-1].set_xlabel("step")
    for panel in panels:
        panel.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _loss_panel(axes: Any, steps: list[dict[str, Any]], epochs: list[dict[str, Any]], marker: str | None) -> None:
    x = [r["step"] for r in steps]
    if len(steps[0]["stage_losses"]) > 1:
        axes.plot(x, [r["loss"] for r in steps], color="black", marker=marker, markersize=3, label="total (weighted)")
    for k in range(len(steps[0]["stage_losses"])):
        axes.plot(x, [r["stage_losses"][k] for r in steps], marker=marker, markersize=3, label=f"stage {k + 1}")
    if epochs:  # points, not a line: the curves above stay the panel's lines, one per logged series
        axes.scatter([r["step"] for r in epochs], [r["loss"] for r in epochs], color="tab:red", marker="s", s=20,
                     zorder=3, label="epoch mean (total)")
    axes.set_ylabel("loss")
    axes.legend()


def save_training_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """The training figure as PNG; None (nothing written) when there are no step records to show."""
    if not any(r.get("kind") == "step" for r in records):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    training_figure(records).savefig(path)
    return path


def _heatmap(figure: Figure, axes: Any, values: list[list[float]], rows: list[str], columns: list[str],
             title: str, cmap: str, limits: tuple[float, float], fmt: str) -> None:
    image = axes.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_title(title, fontsize=10)
    middle = (limits[0] + limits[1]) / 2
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            dark = value < middle if cmap != "RdBu" else abs(value) > 0.6 * limits[1]
            axes.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                      color="white" if dark else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)


def invariance_figure(results: list[tuple[str, ProbeResult]]) -> Figure:
    """Stages x ops heatmaps: invariance (top) and predictability over chance (bottom), one column per
    model; with two models a third column shows the second minus the first."""
    ops, stages = results[0][1].ops, results[0][1].stages

    def grid(result: ProbeResult, metric: str) -> list[list[float]]:
        return [[getattr(result.cell(s, op), metric) for op in ops] for s in stages]

    metrics = [("invariance", "invariance", "viridis", (0.0, 1.0), ".2f"),
               ("over_chance", "predictability over chance", "magma", (0.0, 1.0), ".2f")]
    columns = len(results) + (1 if len(results) == 2 else 0)
    # rows of at least 1.8 in: titles and rotated op names need room even for a single stage
    figure = Figure(figsize=(1.0 + 0.62 * len(ops) * columns, max(3.6, 1.2 + 0.9 * len(stages))), dpi=120)
    axes = figure.subplots(2, columns, squeeze=False)
    for r, (metric, name, cmap, limits, fmt) in enumerate(metrics):
        grids = [grid(result, metric) for _, result in results]
        for c, (label, _) in enumerate(results):
            _heatmap(figure, axes[r][c], grids[c], stages, ops, f"{label}: {name}", cmap, limits, fmt)
        if len(results) == 2:
            delta = [[b - a for a, b in zip(ra, rb)] for ra, rb in zip(*grids)]
            bound = max(0.05, max(abs(v) for row in delta for v in row))
            _heatmap(figure, axes[r][2], delta, stages, ops,
                     f"{results[1][0]} - {results[0][0]}: {name}", "RdBu", (-bound, bound), "+.2f")
    figure.tight_layout()
    return figure


def save_invariance_heatmap(results: list[tuple[str, ProbeResult]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    invariance_figure(results).savefig(path)
    return path


VERDICT_COLOURS = {"needed": "tab:blue", "unclear": "tab:gray", "harmful": "tab:red"}


def ranking_figure(rows: list[dict[str, Any]], title: str, xlabel: str) -> Figure:
    """Horizontal bars, most important op on top: each op's mean drop with its 95 % interval as the error
    bar, coloured by verdict (`rows`: ranking.json's `ranking` entries)."""
    figure = Figure(figsize=(6, 1.2 + 0.45 * len(rows)), dpi=120)
    axes = figure.subplots()
    drops = [r["drop"] for r in reversed(rows)]
    errors = [[d["mean"] - d["low"] for d in drops], [d["high"] - d["mean"] for d in drops]]
    axes.barh(range(len(rows)), [d["mean"] for d in drops], xerr=errors, capsize=4,
              color=[VERDICT_COLOURS[r["verdict"]] for r in reversed(rows)])
    axes.set_yticks(range(len(rows)), [f"{r['op']} ({r['verdict']})" for r in reversed(rows)])
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def save_ranking_chart(rows: list[dict[str, Any]], title: str, xlabel: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ranking_figure(rows, title, xlabel).savefig(path)
    return path
