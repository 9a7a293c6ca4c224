"""`hicl rank-augmentations --method probe`: a ranking from one pilot per seed instead of N + 1.

For every seed, the full-pipeline pilot (the same run leave-one-out makes, so it is shared) and the
same backbone at its random initialisation are probed on held-out test images
(`hicl.evaluate.invariance.probe_invariance`, last stage only). An op's score is the invariance the
pretraining added, in points: 100 * (invariance(pretrained) - invariance(random init)), averaged over
the op's probe variants (colour jitter: brightness, contrast, saturation, hue). Ops are ranked by the
mean score over seeds; the probe cannot say that an op hurts, so no op is marked harmful. When every
leave-one-out pilot of the same settings is finished, the agreement of the two rankings is reported
as Spearman's rho over the ops' means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from hicl.augment.op import canonical
from hicl.evaluate.invariance import probe_ops
from hicl.manifest import Manifest
from hicl.pilots import PilotScore, finished, run_pilots
from hicl.ranking.leave_one_out import (
    FULL, OpRank, Ranking, RankRequest, check_failures, chosen_head, feature_stage_count, leave_one_out_pilots,
    pilot_for, pilot_record, rank_ops,
)
from hicl.ranking.stats import interval, spearman, tie_groups


def invariance_gains(manifest: Manifest, images: Any, ops: list[str]) -> dict[str, float]:
    """op -> 100 * (last-stage invariance of the pilot's backbone - that of its random init)."""
    from hicl.evaluate.features import StageFeatures, pretrained_backbone, random_backbone
    from hicl.evaluate.invariance import probe_invariance

    variants = {name: op for name, (op, _) in probe_ops().items() if op in ops}
    by_model = []
    for backbone, _ in (pretrained_backbone(manifest, manifest.run_dir / "checkpoints" / "last"), random_backbone(manifest)):
        features = StageFeatures(backbone, manifest.backbone.name, manifest.view_size)
        last = features.resolve(["last"])
        result = probe_invariance(features, images, manifest.augment, manifest.view_size, last, list(variants),
                                  seed=manifest.seed)
        by_model.append({v: result.cell(last[0], v).invariance for v in result.ops})
    gains: dict[str, list[float]] = {}
    for variant, value in by_model[0].items():
        gains.setdefault(variants[variant], []).append(100 * (value - by_model[1][variant]))
    return {op: sum(values) / len(values) for op, values in gains.items()}


def _probe_images(base: Manifest, count: int) -> Any:
    from hicl.data.loader import load_split

    data = base.data.model_copy(update={"max_images": min(count, base.data.max_images or count)})
    return load_split(data, "test", base.view_size).images[:count]


def agreement(request: RankRequest, base: Manifest, ranked: list[OpRank], head: str) -> dict[str, Any]:
    """Spearman's rho between this ranking and leave-one-out's, when every leave-one-out pilot is finished."""
    pilots = leave_one_out_pilots(request, base)
    if not all(finished(p.resolved(), p.results()) for p in pilots):
        return {"spearman_rho": None, "note": "run --method leave-one-out with the same settings to compare"}
    scores = [o for o in run_pilots(pilots) if isinstance(o, PilotScore)]  # every one is read back
    _, loo, _ = rank_ops(scores, canonical(base.augment.ops), head, False, None)
    loo_mean = {o.op: o.drop.mean for o in loo}
    ops = [o.op for o in ranked if o.op in loo_mean]
    rho = spearman([next(o.drop.mean for o in ranked if o.op == op) for op in ops], [loo_mean[op] for op in ops])
    return {"spearman_rho": round(rho, 3), "ops": ops, "leave_one_out_order": [o.op for o in loo]}


def rank_by_probe(
    request: RankRequest, on_done: Callable[[Any], None] | None, console: Console
) -> tuple[Ranking, dict[str, Any]]:
    """The probe ranking of the manifest's ops, and its agreement with leave-one-out."""
    base = request.base()
    ops = canonical(base.augment.ops)
    outcomes = run_pilots([pilot_for(request, base, None, seed) for seed in request.seeds], request.jobs, on_done)
    check_failures(outcomes)
    scores = [o for o in outcomes if isinstance(o, PilotScore)]
    images = _probe_images(base, request.probe_images)
    per_seed: dict[str, dict[int, float]] = {}
    for score in scores:
        with console.status(f"probing {FULL} seed {score.pilot.seed}"):
            gains = invariance_gains(score.pilot.resolved(), images, ops)
        for op, gain in gains.items():
            per_seed.setdefault(op, {})[score.pilot.seed] = gain
    ranked = []
    for op, gains in per_seed.items():
        gain = interval(list(gains.values()), request.student)
        ranked.append(OpRank(op, gains, gain, "needed" if gain.low > 0 else "unclear"))
    ranked.sort(key=lambda o: -o.drop.mean)
    groups = tie_groups([o.op for o in ranked], {o.op: o.drop for o in ranked}, feature_stage_count(base))
    head = chosen_head(request, scores[0])
    ranking = Ranking(head, list(request.seeds), interval([s.top1()[head] for s in scores], request.student), ranked,
                      groups, [pilot_record(s) for s in scores], metric="invariance_gain", student=request.student)
    return ranking, agreement(request, base, ranked, head)
