"""`hicl rank-augmentations`: which augmentation ops matter for a manifest's data, measured by leave-one-out.

For every seed, short pilot pretrainings of the manifest's plain method (hierarchy off) run with the
full pipeline (`augment.ops`) and with the full pipeline minus each op in turn (`hicl.pilots`), each
scored by weighted kNN top-1 (and linear top-1 with `linear`) on the label head `head`. An op's
importance is its drop, score(full) - score(without the op), paired by seed, with a 95 % interval
over the seeds (`hicl.ranking.stats`: the normal approximation, or Student's t with `student`). Ops are
ranked by the mean drop; an op whose interval lies below zero is harmful for this data (removing it
helps). Finished pilots are reused on a rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hicl.augment.op import canonical
from hicl.errors import HiclError
from hicl.manifest import Manifest, load_manifest
from hicl.pilots import Pilot, PilotFailure, PilotScore, run_pilots
from hicl.ranking.stats import Interval, Verdict, interval, tie_groups, verdict

FULL = "full"
Method = Literal["leave_one_out", "probe"]


@dataclass(frozen=True)
class RankRequest:
    """What to rank: a manifest (and `--set` overrides), the seeds, the pilots' epochs (None: the
    manifest's), parallel jobs, the linear probe too, the head to rank on (None: the first evaluated),
    the run-directory prefix of the pilots (None: rank_<manifest name>), the method, the probe's images
    and the kind of interval (`student`: Student's t, wider with few seeds; else the normal approximation)."""

    manifest: Path
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    jobs: int = 1
    linear: bool = False
    head: str | None = None
    prefix: str | None = None
    method: Method = "leave_one_out"
    probe_images: int = 512
    student: bool = False

    def base(self) -> Manifest:
        """The manifest with the user's overrides, before any pilot's."""
        return load_manifest(self.manifest, list(self.overrides))

    def run_prefix(self, base: Manifest) -> str:
        return self.prefix or f"rank_{base.name}"


@dataclass(frozen=True)
class OpRank:
    """One op's measured importance: per-seed drops (points of top-1), their interval and the verdict."""

    op: str
    drops: dict[int, float]
    drop: Interval
    verdict: Verdict
    linear_drop: Interval | None = None

    def record(self) -> dict[str, Any]:
        record = {"op": self.op, "verdict": self.verdict, "drop": self.drop.record(),
                  "drop_per_seed": {str(s): round(d, 3) for s, d in self.drops.items()}}
        if self.linear_drop is not None:
            record["linear_drop"] = self.linear_drop.record()
        return record


@dataclass
class Ranking:
    """The ranked ops (most important first), their groups and the dropped (harmful) ones. `metric`:
    what an op's `drop` measures (knn_top1_drop: points of kNN top-1; invariance_gain: see `probe`)."""

    head: str
    seeds: list[int]
    full: Interval
    ops: list[OpRank]
    groups: list[list[str]]
    pilots: list[dict[str, Any]]
    metric: str = "knn_top1_drop"
    probe: dict[str, Any] | None = field(default=None)
    student: bool = False

    @property
    def harmful(self) -> list[OpRank]:
        return [o for o in self.ops if o.verdict == "harmful"]

    def record(self) -> dict[str, Any]:
        return {"head": self.head, "metric": self.metric, "seeds": self.seeds,
                "interval": "student" if self.student else "normal", "full": self.full.record(),
                "ranking": [o.record() for o in self.ops], "groups": self.groups,
                "dropped": [o.op for o in self.harmful], "pilots": self.pilots, "probe": self.probe}


def variant_name(without: str | None) -> str:
    return FULL if without is None else f"no_{without}"


def pilot_for(request: RankRequest, base: Manifest, without: str | None, seed: int) -> Pilot:
    """The pilot of the full pipeline (`without` None) or of the pipeline without one op, for `seed`."""
    ops = [op for op in canonical(base.augment.ops) if op != without]
    views = [{op: v for op, v in view.items() if op != without} for view in base.augment.views]
    epochs = [] if request.epochs is None else [f"schedule.epochs={request.epochs}", "schedule.warmup_epochs=0"]
    name = f"{request.run_prefix(base)}_{variant_name(without)}_s{seed}"
    overrides = (
        # off: one stage, so per-stage weights and embedding stages of the manifest's hierarchy do not apply
        *request.overrides, "hierarchy.mode=off", "hierarchy.loss_weights=null", "hierarchy.embeddings.stages=null",
        f"augment.ops={json.dumps(ops)}", f"augment.views={json.dumps(views)}",
        f"seed={seed}", *epochs, "eval.after_pretrain=false", "eval.random_init_baseline=false", f"output.name={name}",
    )
    return Pilot(request.manifest, overrides, variant_name(without), seed, linear=request.linear)


def leave_one_out_pilots(request: RankRequest, base: Manifest) -> list[Pilot]:
    """For every seed: the full pipeline first, then the pipeline without each op (canonical order)."""
    ops = canonical(base.augment.ops)
    if not ops:
        raise HiclError("augment.ops: the pipeline is empty, there is nothing to rank")
    return [pilot_for(request, base, without, seed) for seed in request.seeds for without in [None, *ops]]


def never_applied(base: Manifest) -> list[str]:
    """Ops of the pipeline whose probability `p` is 0 in both views: their leave-one-out pilot trains the
    full pipeline, so their drop measures only the seeds' noise (a control, not an importance)."""
    views = [base.augment.view(0), base.augment.view(1)]
    return [op for op in canonical(base.augment.ops) if all(getattr(getattr(v, op), "p", None) == 0 for v in views)]


def check_failures(outcomes: list[PilotScore | PilotFailure]) -> None:
    failures = [o for o in outcomes if isinstance(o, PilotFailure)]
    if failures:
        first = failures[0]
        raise HiclError(f"{len(failures)} pilot(s) failed; {first.pilot.label}: {first.message} (log: {first.log})")


def chosen_head(request: RankRequest, score: PilotScore) -> str:
    heads = list(score.knn["heads"])
    if request.head is None:
        return heads[0]
    if request.head not in heads:
        raise HiclError(f"--head: no label head {request.head!r} was evaluated; expected one of {', '.join(heads)}")
    return request.head


def _top1_table(outcomes: list[PilotScore], head: str, which: str) -> dict[str, dict[int, float]]:
    """variant -> seed -> top-1 % on `head`."""
    table: dict[str, dict[int, float]] = {}
    for score in outcomes:
        table.setdefault(score.pilot.variant, {})[score.pilot.seed] = score.top1(which)[head]
    return table


def _drops(table: dict[str, dict[int, float]], op: str) -> dict[int, float]:
    without = table[variant_name(op)]
    return {seed: table[FULL][seed] - without[seed] for seed in table[FULL] if seed in without}


def rank_ops(
    outcomes: list[PilotScore], ops: list[str], head: str, linear: bool, max_groups: int | None, student: bool = False
) -> tuple[Interval, list[OpRank], list[list[str]]]:
    """The full pipeline's score, the ops ranked by mean kNN drop, and the groups of the non-harmful ones
    (intervals by Student's t with `student`)."""
    knn = _top1_table(outcomes, head, "knn")
    lin = _top1_table(outcomes, head, "linear") if linear else None
    ranked = []
    for op in ops:
        drops = _drops(knn, op)
        drop = interval(list(drops.values()), student)
        linear_drop = interval(list(_drops(lin, op).values()), student) if lin is not None else None
        ranked.append(OpRank(op, drops, drop, verdict(drop), linear_drop))
    ranked.sort(key=lambda o: -o.drop.mean)
    kept = [o.op for o in ranked if o.verdict != "harmful"]
    groups = tie_groups(kept, {o.op: o.drop for o in ranked}, max_groups)
    return interval(list(knn[FULL].values()), student), ranked, groups


def pilot_record(score: PilotScore) -> dict[str, Any]:
    return {"pilot": score.pilot.label, "run": str(score.run), "train_s": score.train_s,
            "knn": score.top1("knn"), "linear": score.top1("linear") or None}


def feature_stage_count(base: Manifest) -> int:
    """How many stages the backbone can tap (the most groups an add_one hierarchy can have)."""
    from hicl.models.backbone import create_backbone, feature_stages

    return len(feature_stages(create_backbone(base.backbone)))


def rank_augmentations(request: RankRequest, on_done: Callable[[Any], None] | None = None) -> Ranking:
    """Run (or reuse) every leave-one-out pilot and rank the manifest's ops; `on_done` sees each pilot."""
    base = request.base()
    ops = canonical(base.augment.ops)
    outcomes = run_pilots(leave_one_out_pilots(request, base), request.jobs, on_done)
    check_failures(outcomes)
    scores = [o for o in outcomes if isinstance(o, PilotScore)]
    head = chosen_head(request, scores[0])
    full, ranked, groups = rank_ops(scores, ops, head, request.linear, feature_stage_count(base), request.student)
    return Ranking(head, list(request.seeds), full, ranked, groups, [pilot_record(s) for s in scores],
                   student=request.student)
