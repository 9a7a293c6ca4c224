"""Pilot runs: one variant of a manifest, for one seed, pretrained and scored, and reused when finished.

A `Pilot` is a manifest file plus `--set` overrides (the variant and its seed). `run_pilot` pretrains it
in this process (`hicl.train.loop.pretrain`), then scores the backbone with weighted kNN
(`hicl.evaluate.knn_eval`) and, if asked, the linear probe (`hicl.evaluate.linear.linear_eval`). A run
whose directory already holds every asked-for result for exactly the same resolved manifest is read
back instead of rerun, so an interrupted comparison continues where it stopped. `run_pilots` runs a
list of them, one after the other or `jobs` at a time in worker processes. The benchmark
`benchmarks/hierarchy_compare.py` and `hicl rank-augmentations` both run their variants through here.

Ctrl-C: a pilot that is pretraining stops after its step (as `hicl pretrain` does), no further pilot
starts, and `Interrupted` is raised; rerunning the same command reuses every finished pilot.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hicl.errors import HiclError
from hicl.manifest import Manifest, load_manifest

KNN_RESULT = "knn.json"
LINEAR_RESULT = "linear_eval.json"


@dataclass(frozen=True)
class Pilot:
    """One run to make: `manifest` with `overrides` applied (the last ones win), scored by kNN, and by
    the linear probe when `linear`; `variant` and `seed` name it in reports."""

    manifest: Path
    overrides: tuple[str, ...]
    variant: str
    seed: int
    linear: bool = False

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"

    def resolved(self) -> Manifest:
        return load_manifest(self.manifest, list(self.overrides))

    def results(self) -> tuple[str, ...]:
        return (LINEAR_RESULT, KNN_RESULT) if self.linear else (KNN_RESULT,)


@dataclass(frozen=True)
class PilotScore:
    """A finished pilot: its run directory, pretraining seconds (None when reused) and result records."""

    pilot: Pilot
    run: Path
    train_s: float | None
    knn: dict[str, Any]
    linear: dict[str, Any] | None = None

    def top1(self, which: str = "knn", column: str = "pretrained") -> dict[str, float]:
        """Top-1 % per label head of the `knn` or `linear` result, for the `pretrained` or `random_init` column."""
        result = self.knn if which == "knn" else self.linear
        if result is None:
            return {}
        return {h: round(100 * v[column]["top1"], 2) for h, v in result["heads"].items() if column in v}


@dataclass(frozen=True)
class PilotFailure:
    """A pilot that did not finish: why, and where its log is; `stopped` when a signal stopped it."""

    pilot: Pilot
    message: str
    log: Path
    stopped: bool = False


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a list of pilots; `finished` of `total` completed."""

    def __init__(self, finished: int, total: int):
        super().__init__(f"interrupted after {finished} of {total} pilots")
        self.finished, self.total = finished, total


def finished(manifest: Manifest, results: Sequence[str]) -> bool:
    """The run directory already holds `results` for exactly this resolved manifest."""
    run = manifest.run_dir
    if not all((run / "results" / name).is_file() for name in results) or not (run / "manifest.yaml").is_file():
        return False
    saved = yaml.safe_load((run / "manifest.yaml").read_text())
    return saved == manifest.model_dump(mode="json")


def log_path(manifest: Manifest) -> Path:
    """Where a pilot's console output goes: next to its run directory."""
    return Path(f"{manifest.run_dir}.log")


def _train_and_score(manifest: Manifest, linear: bool, log: Path) -> float:
    """Pretrain afresh and write the results; the pretraining's wall seconds."""
    from rich.console import Console

    from hicl.evaluate.knn_eval import knn_eval
    from hicl.evaluate.linear import linear_eval
    from hicl.lock import RunLock
    from hicl.runs import RunDir
    from hicl.train.loop import pretrain
    from hicl.train.outcome import RunOutcome

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        console = Console(file=stream, width=160)
        start = time.perf_counter()
        # outcome.json, so that `hicl runs` lists a finished pilot as finished
        pretrain(manifest, overwrite=True, console=console, show_progress=False, callbacks=[RunOutcome()])
        train_s = round(time.perf_counter() - start, 1)
        run = RunDir(manifest.run_dir)
        with RunLock(run.path):
            if linear:
                linear_eval(manifest, run, console)
            knn_eval(manifest, run, console)
    return train_s


def run_pilot(pilot: Pilot) -> PilotScore:
    """Pretrain and score `pilot`, or read it back when its run directory already holds its results."""
    manifest = pilot.resolved()
    train_s = None
    if not finished(manifest, pilot.results()):
        train_s = _train_and_score(manifest, pilot.linear, log_path(manifest))
    results = manifest.run_dir / "results"
    knn = json.loads((results / KNN_RESULT).read_text())
    linear = json.loads((results / LINEAR_RESULT).read_text()) if pilot.linear else None
    return PilotScore(pilot, manifest.run_dir, train_s, knn, linear)


def attempt(pilot: Pilot) -> PilotScore | PilotFailure:
    """`run_pilot`, with a failure returned rather than raised (one failed pilot must not cancel the others)."""
    from hicl.train.signals import Stopped

    try:
        return run_pilot(pilot)
    except Stopped as stopped:
        return PilotFailure(pilot, str(stopped), _log_of(pilot), stopped=True)
    except HiclError as exc:
        return PilotFailure(pilot, str(exc), _log_of(pilot))
    except Exception as exc:  # a bug in one variant: reported with the others' results, never lost silently
        return PilotFailure(pilot, f"{type(exc).__name__}: {exc}", _log_of(pilot))


def _log_of(pilot: Pilot) -> Path:
    try:
        return log_path(pilot.resolved())
    except HiclError:
        return Path(f"{pilot.manifest}.log")


def _worker_start() -> None:
    # the parent decides what Ctrl-C does; a worker stops only inside pretraining, after its step
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class _Tally:
    """What `run_pilots` collected so far, in the pilots' order."""

    outcomes: dict[int, PilotScore | PilotFailure] = field(default_factory=dict)

    def add(self, index: int, outcome: PilotScore | PilotFailure, on_done: Callable[[Any], None] | None) -> None:
        self.outcomes[index] = outcome
        if on_done is not None:
            on_done(outcome)

    def stopped(self) -> bool:
        return any(isinstance(o, PilotFailure) and o.stopped for o in self.outcomes.values())


def run_pilots(
    pilots: Sequence[Pilot], jobs: int = 1, on_done: Callable[[PilotScore | PilotFailure], None] | None = None
) -> list[PilotScore | PilotFailure]:
    """Every pilot's outcome, in the order given: in this process when `jobs` is 1, else `jobs` at a time
    in worker processes. `on_done` sees each outcome as it arrives. Raises `Interrupted` on Ctrl-C."""
    tally = _Tally()
    try:
        if jobs <= 1:
            for index, pilot in enumerate(pilots):
                tally.add(index, attempt(pilot), on_done)
                if tally.stopped():
                    break
        else:
            _in_workers(pilots, jobs, tally, on_done)
    except KeyboardInterrupt:
        raise Interrupted(_scored(tally), len(pilots)) from None
    if tally.stopped() or len(tally.outcomes) < len(pilots):
        raise Interrupted(_scored(tally), len(pilots))
    return [tally.outcomes[i] for i in range(len(pilots))]


def _scored(tally: _Tally) -> int:
    return sum(isinstance(o, PilotScore) for o in tally.outcomes.values())


def _in_workers(pilots: Sequence[Pilot], jobs: int, tally: _Tally, on_done: Callable[[Any], None] | None) -> None:
    # spawn: a forked copy of a process that already runs torch threads can deadlock
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start)
    futures: dict[Future, int] = {}
    try:
        futures = {pool.submit(attempt, pilot): index for index, pilot in enumerate(pilots)}
        for future in as_completed(futures):
            tally.add(futures[future], future.result(), on_done)
            if tally.stopped():
                break
    finally:
        # on Ctrl-C the running pilots stop after their step; the waiting ones never start
        pool.shutdown(wait=True, cancel_futures=True)
        for future, index in futures.items():
            if index not in tally.outcomes and future.done() and not future.cancelled():
                tally.add(index, future.result(), on_done)

