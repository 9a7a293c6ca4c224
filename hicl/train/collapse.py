"""Per-stage collapse figures from projections the step already computed, and the alarm over them.

For a stage's projections of the two views, `z_a`, `z_b` ([N, d] each):

- `spread`: the standard deviation over the batch of the L2-normalised outputs, averaged over the d
  dimensions and multiplied by sqrt(d). Uniformly spread unit vectors have a per-dimension std of about
  1/sqrt(d), so a healthy stage reads about 1 and a collapsed one (every image the same output) 0
  (SimSiam, Chen & He 2021, Fig. 2).
- `effective_rank`: exp of the entropy of the normalised singular values p_k = s_k / sum s of the
  stacked embeddings [z_a; z_b] (RankMe, Garrido et al. 2023): between 1 (rank one) and min(2N, d).
- `view_cosine`: the mean cosine of the two views of each image; near 1 for every image when a
  SimSiam/BYOL stage has collapsed (and also when it is simply invariant, so it is logged, not alarmed).

`CollapseAlarm` counts, per stage, consecutive checks whose spread is under the threshold and names the
stages that reach `patience` checks in a row. `CollapseMonitor` is the trainer's callback: every
`runtime.health_every` steps (logging steps, so the figures ride in that step's metrics.jsonl record and
reach the loggers) it reads back the figures of the step's own projections, the only host sync it adds,
and warns or stops (`runtime.on_collapse`) when the alarm fires. Under torchrun it sees rank 0's share.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hicl.representation import effective_rank, spread, view_cosine
from hicl.train.callbacks import Callback, RunState

if TYPE_CHECKING:
    from hicl.models.network import SSLModel

# what usually brings a collapsing stage back, by method
REMEDIES = {
    "simsiam": "a lower optim.lr, a larger optim.weight_decay, method.fixed_predictor_lr: true",
    "byol": "a lower optim.lr, a larger optim.weight_decay, a higher method.momentum",
}
DEFAULT_REMEDY = "a lower optim.lr, a larger optim.weight_decay, a longer schedule.warmup_epochs"


@dataclass(frozen=True)
class StageHealth:
    spread: float
    effective_rank: float
    view_cosine: float

    def record(self, stage: int) -> dict[str, float]:
        return {f"spread_{stage}": self.spread, f"erank_{stage}": self.effective_rank,
                f"view_cos_{stage}": self.view_cosine}


def stage_health(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """[spread, effective rank, view cosine] of one stage, as one device tensor (read back by the caller)."""
    both = torch.cat((z_a, z_b)).detach()
    return torch.stack((spread(both), effective_rank(both), view_cosine(z_a.detach(), z_b.detach())))


@dataclass
class CollapseAlarm:
    """Names the stages whose spread stayed under `threshold` for `patience` checks in a row."""

    threshold: float
    patience: int
    _low: dict[int, int] = field(default_factory=dict)

    def update(self, healths: list[StageHealth]) -> list[int]:
        """Record one check (stages 0-based); the stages that have just reached `patience` low checks."""
        fired = []
        for stage, health in enumerate(healths):
            low = self._low.get(stage, 0) + 1 if health.spread < self.threshold else 0
            self._low[stage] = low
            if low == self.patience:
                fired.append(stage)
        return fired


class CollapseMonitor(Callback):
    """Spread, effective rank and view cosine per stage every `runtime.health_every` steps; the alarm."""

    def __init__(self, model: SSLModel):
        self.model = model

    def on_run_start(self, run: RunState) -> None:
        runtime = run.manifest.runtime
        self.every = runtime.health_interval
        self.alarm = CollapseAlarm(runtime.collapse_threshold, runtime.collapse_patience)
        self.model.keep_projections = (run.step + 1) % self.every == 0

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        self.model.keep_projections = (run.step + 1) % self.every == 0
        if record is None or run.step % self.every or not self.model.last_projections:
            return
        figures = torch.stack([stage_health(*z.chunk(2)) for z in self.model.last_projections]).cpu().tolist()
        self.model.last_projections = []
        healths = [StageHealth(*values) for values in figures]
        record["spread"] = [h.spread for h in healths]
        record["effective_rank"] = [h.effective_rank for h in healths]
        record["view_cosine"] = [h.view_cosine for h in healths]
        worst = min(range(len(healths)), key=lambda k: healths[k].spread)
        run.health = f"spread s{worst + 1} {healths[worst].spread:.2f}"
        for stage in self.alarm.update(healths):
            self._alarm(run, stage, healths[stage])

    def _alarm(self, run: RunState, stage: int, health: StageHealth) -> None:
        runtime = run.manifest.runtime
        message = (f"stage {stage + 1} is collapsing: spread {health.spread:.3f} (healthy about 1), effective rank "
                   f"{health.effective_rank:.1f}, under runtime.collapse_threshold {runtime.collapse_threshold} for "
                   f"{runtime.collapse_patience} checks in a row (step {run.step}); what usually helps: "
                   f"{REMEDIES.get(run.manifest.method.name, DEFAULT_REMEDY)}")
        if runtime.on_collapse == "stop" and run.stop_signal is None:
            run.stop_signal, run.stop_reason = signal.SIGTERM, message
        else:
            run.console.print(f"warning: {message}")

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        self.model.keep_projections = False
