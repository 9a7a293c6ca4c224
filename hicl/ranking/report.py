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
# what a ranking's numbers mean, per metric: (table column, chart axis, chart title)
METRICS = {
    "knn_top1_drop": ("kNN drop [95 %]", "kNN top-1 drop when removed (points)", "leave-one-out"),
    "invariance_gain": ("invariance gain [95 %]", "last-stage invariance gained over random init (points)", "probe"),
}


def _cell(drop: Interval) -> str:
    return f"{drop.mean:+.2f}" if drop.n == 1 else f"{drop.mean:+.2f} [{drop.low:+.2f}, {drop.high:+.2f}]"


def render_ranking(ranking: Ranking) -> Table:
    """One row per op, most important first: its drop (and linear drop), verdict, group; a caption with
    Spearman's rho against leave-one-out when the probe ranking has one."""
    linear = any(o.linear_drop is not None for o in ranking.ops)
    full = ranking.full
    kind = "Student's t" if ranking.student else "normal approximation"
    table = Table(title=f"augmentation ranking ({METRICS[ranking.metric][2]}), head {ranking.head} (full pipeline kNN "
                        f"top-1 {full.mean:.2f} ± {full.sd:.2f} %, {full.n} seed{'s' * (full.n != 1)}; 95 % intervals: "
                        f"{kind})")
    columns = ["rank", "op", METRICS[ranking.metric][0], *(["linear drop [95 %]"] if linear else []), "verdict", "group"]
    for column in columns:
        table.add_column(column, justify="right" if "[" in column or column == "rank" else "left")
    group_of = {op: index + 1 for index, group in enumerate(ranking.groups) for op in group}
    for rank, o in enumerate(ranking.ops, 1):
        cells = [str(rank), o.op, _cell(o.drop)]
        if linear:
            cells.append(_cell(o.linear_drop) if o.linear_drop is not None else "")
        cells += [o.verdict, str(group_of.get(o.op, "dropped"))]
        table.add_row(*cells)
    rho = (ranking.probe or {}).get("spearman_rho")
    if rho is not None:
        table.caption = f"Spearman's rho against leave-one-out over {len(ranking.probe['ops'])} ops: {rho:+.2f}"
    return table


def write_ranking(ranking: Ranking, out: Path, extra: dict | None = None) -> list[Path]:
    """ranking.json (with `extra`, e.g. the command) and the bar chart in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    record = {**(extra or {}), **ranking.record()}
    json_path = out / RANKING_JSON
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    _, axis, method = METRICS[ranking.metric]
    title = f"{method}, head {ranking.head}, {len(ranking.seeds)} seed(s)"
    return [json_path, save_ranking_chart(record["ranking"], title, axis, out / RANKING_CHART)]
