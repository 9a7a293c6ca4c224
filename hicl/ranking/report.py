"""What `hicl rank-augmentations` shows and writes: the table, ranking.json and the bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from hicl.plots import save_ranking_chart
from hicl.ranking.leave_one_out import Ranking
from hicl.ranking.stats import Interval

RANKING_JSON = "ranking.json"
RANKING_CHART = "ranking.png"


def _cell(drop: Interval) -> str:
    return f"{drop.mean:+.2f}" if drop.n == 1 else f"{drop.mean:+.2f} [{drop.low:+.2f}, {drop.high:+.2f}]"


def render_ranking(ranking: Ranking) -> Table:
    """One row per op, most important first: kNN drop (and linear drop), verdict, group."""
    linear = any(o.linear_drop is not None for o in ranking.ops)
    full = ranking.full
    table = Table(title=f"augmentation ranking, head {ranking.head} (full pipeline kNN top-1 "
                        f"{full.mean:.2f} ± {full.sd:.2f} %, {full.n} seed{'s' * (full.n != 1)})")
    for column in ["rank", "op", "kNN drop [95 %]", *(["linear drop [95 %]"] if linear else []), "verdict", "group"]:
        table.add_column(column, justify="right" if "drop" in column or column == "rank" else "left")
    group_of = {op: index + 1 for index, group in enumerate(ranking.groups) for op in group}
    for rank, o in enumerate(ranking.ops, 1):
        cells = [str(rank), o.op, _cell(o.drop)]
        if linear:
            cells.append(_cell(o.linear_drop) if o.linear_drop is not None else "")
        cells += [o.verdict, str(group_of.get(o.op, "dropped"))]
        table.add_row(*cells)
    return table


def write_ranking(ranking: Ranking, out: Path, extra: dict | None = None) -> list[Path]:
    """ranking.json (with `extra`, e.g. the command) and the bar chart in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    record = {**(extra or {}), **ranking.record()}
    json_path = out / RANKING_JSON
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    title = f"leave-one-out, head {ranking.head}, {len(ranking.seeds)} seed(s)"
    return [json_path, save_ranking_chart(record["ranking"], title, out / RANKING_CHART)]
