"""`hicl rank-augmentations` end to end: rank by the chosen method, write the outputs, report progress."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hicl.manifest import Manifest
from hicl.pilots import PilotFailure, PilotScore
from hicl.ranking.leave_one_out import RankRequest, never_applied, rank_augmentations
from hicl.ranking.report import render_ranking, write_ranking
from hicl.ranking.stats import Z975, t975
from hicl.ranking.written import write_ranked_manifest


class PilotProgress:
    """Prints one line per finished (or reused) pilot."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.done = console, total, 0

    def __call__(self, outcome: PilotScore | PilotFailure) -> None:
        self.done += 1
        where = f"pilot {self.done}/{self.total} {outcome.pilot.label}"
        if isinstance(outcome, PilotFailure):
            self.console.print(f"{where}: {'stopped' if outcome.stopped else 'failed'}: {outcome.message} (log: {outcome.log})")
            return
        how = "reused" if outcome.train_s is None else f"pretrained in {outcome.train_s:.0f} s"
        scores = ", ".join(f"{h} {v:.1f}" for h, v in outcome.top1("knn").items())
        self.console.print(f"{where}: kNN top-1 % {scores} ({how})")


def print_notes(request: RankRequest, base: Manifest, console: Console) -> None:
    """What the user should know before the pilots run: controls among the ops, and narrow intervals."""
    if request.method != "probe":
        for op in never_applied(base):
            console.print(f"note: {op} has p 0 in both views, so its pilot trains the full pipeline; "
                          "its drop is the noise floor of these seeds, not an importance")
    seeds = len(request.seeds)
    if not request.student and 1 < seeds <= 5:
        console.print(f"note: with {seeds} seeds the normal 95 % interval is {t975(seeds - 1) / Z975:.1f}x narrower "
                      "than Student's; --interval student gives the conservative verdicts")


def run_ranking(
    request: RankRequest, out: Path | None, write: Path | None, console: Console
) -> tuple[list[Table], list[Path]]:
    """Rank, then write ranking.json and the chart to `out` (default output.dir/<prefix>) and, if asked,
    the ranked manifest to `write`; the tables to show and the files written."""
    base = request.base()
    out = out or base.output.dir / request.run_prefix(base)
    print_notes(request, base, console)
    extra = {"command": sys.argv, "manifest": str(request.manifest), "overrides": list(request.overrides),
             "epochs": request.epochs, "method": request.method}
    if request.method == "probe":
        from hicl.ranking.probe import rank_by_probe

        ranking, agreement = rank_by_probe(request, PilotProgress(console, len(request.seeds)), console)
        ranking.probe = agreement
    else:
        per_seed = len(base.augment.ops) + 1
        ranking = rank_augmentations(request, PilotProgress(console, per_seed * len(request.seeds)))
    paths = write_ranking(ranking, out, extra)
    if write is not None:
        paths.append(write_ranked_manifest(request, ranking, write))
    return [render_ranking(ranking)], paths
