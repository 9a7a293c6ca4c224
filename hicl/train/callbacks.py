"""What a run does around its steps, as callbacks: progress, the run record, kNN, stop signals, checkpoints.

The trainer (`hicl.train.loop`) calls every callback's hooks in list order:

    on_run_start(run)              the run directory exists, a resumed run has loaded its checkpoint
    on_step_end(run, record)       after every optimiser step; `record` is the metrics.jsonl step record
                                   (averaged over ranks) on logging steps, else None
    on_epoch_end(run, records)     `records` starts as [the epoch record]; a callback may append (kNN),
                                   so the ones after it see those records too
    on_run_end(run, error)         always: error is None when the run finished, else what stopped it

Every rank runs the callbacks it was given; those that write files or talk to a logger are given to
rank 0 only (`hicl.train.loop.run_callbacks`), and those that synchronise ranks (stop signals,
checkpoints) to every rank, in the same order. A callback asks the run to stop by setting
`run.stop_signal` (a signal number, as if it had been received): the stop-signal callback after it
makes the ranks agree on it, the checkpoint callback saves, and the trainer stops after the hooks of that
step (the epoch's last step: of its epoch end) have run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hicl.manifest import Manifest
from hicl.plots import save_training_plot
from hicl.runs import RunDir
from hicl.train.dist import max_over_ranks
from hicl.train.progress import LineProgress
from hicl.train.signals import stop_requests

TRAINING_PLOT = "training.png"


@dataclass
class RunState:
    """Where a run stands, shared by the trainer (which advances it) and the callbacks (which read it)."""

    manifest: Manifest
    run: RunDir
    device: torch.device
    console: Console
    steps_per_epoch: int
    world_size: int = 1
    epoch: int = 0  # the epoch in progress (0-based); at the end, the number of epochs done
    step: int = 0  # optimiser steps done in the whole run
    epoch_step: int = 0  # steps done in the current epoch
    resumed_step: int | None = None  # the checkpoint's step when the run was resumed
    lr: float = 0.0
    loss: float | None = None  # the last logged loss (from the checkpoint until this session logs one)
    wall_before_s: float = 0.0  # training seconds of the run's earlier sessions
    started: float = field(default_factory=time.perf_counter)
    stop_signal: int | None = None
    stop_reason: str | None = None  # why a callback stopped the run (a collapse), None for a signal
    health: str = ""  # the collapse monitor's last word on the worst stage, for the progress line

    @property
    def epochs(self) -> int:
        return self.manifest.schedule.epochs

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def wall_s(self) -> float:
        """Training seconds of the whole run, earlier sessions included."""
        return self.wall_before_s + time.perf_counter() - self.started


class Callback:
    """Does nothing at every hook; subclasses override the hooks they need."""

    def on_run_start(self, run: RunState) -> None: ...

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None: ...

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None: ...

    def on_run_end(self, run: RunState, error: BaseException | None) -> None: ...


class Callbacks:
    """A run's callbacks, called in order at each hook; `on_run_end` reaches those whose start ran."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks
        self.started = 0

    def run_start(self, run: RunState) -> None:
        for callback in self.callbacks:
            callback.on_run_start(run)
            self.started += 1

    def step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        for callback in self.callbacks:
            callback.on_step_end(run, record)

    def epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(run, records)

    def run_end(self, run: RunState, error: BaseException | None) -> None:
        for callback in self.callbacks[: self.started]:
            callback.on_run_end(run, error)


def close(stack: ExitStack, error: BaseException | None) -> None:
    """Leave the contexts a callback entered at run start as a `with` block would on `error`."""
    if error is None:
        stack.close()
    else:
        stack.__exit__(type(error), error, error.__traceback__)


def progress_bar(console: Console, enabled: bool) -> Progress | LineProgress:
    """rich's live bar on a terminal; plain lines for a log file or a pipe."""
    if enabled and not console.is_terminal:
        return LineProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f} img/s"),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


class ProgressBar(Callback):
    """Steps done, images/s and the last logged losses."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stack = ExitStack()

    def on_run_start(self, run: RunState) -> None:
        self.bar = self.stack.enter_context(progress_bar(run.console, self.enabled))
        self.task = self.bar.add_task(run.manifest.name, total=run.total_steps, completed=run.step, rate=0.0, losses="")

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        if record is not None:
            shown = " ".join(f"s{k + 1} {v:.3f}" for k, v in enumerate(record["stage_losses"]))
            losses = f"loss {record['loss']:.3f}  [{shown}]" + (f"  {run.health}" if run.health else "")
            self.bar.update(self.task, rate=record["images_per_s"], losses=losses)
        self.bar.update(self.task, advance=1)

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        close(self.stack, error)


class RunRecord(Callback):
    """metrics.jsonl (every record), env.json's list of skipped files as it grows, training.png at the end."""

    def __init__(self, skipped: Callable[[], int], rewrite_env: Callable[[], str]):
        self.skipped, self.rewrite_env = skipped, rewrite_env

    def on_run_start(self, run: RunState) -> None:
        self.skipped_seen = self.skipped()

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        if record is not None:
            run.run.log(record)

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        for record in records:
            run.run.log(record)
        if self.skipped() > self.skipped_seen:
            self.skipped_seen = self.skipped()
            run.console.print(f"data: epoch {run.epoch + 1}{self.rewrite_env()}")

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        if error is None:
            save_training_plot(run.run.read_metrics(), run.run.results / TRAINING_PLOT)


class KnnMonitor(Callback):
    """kNN top-1 of the backbone every `runtime.knn_every` epochs, on the labeled splits read (evaluation
    transform) before training starts; appends a `knn` record to the epoch's records."""

    def __init__(self, manifest: Manifest, model: torch.nn.Module):
        from hicl.evaluate.linear import eval_splits  # only runs that monitor need the evaluation layer
        from hicl.train.device import resolve_device

        self.manifest, self.model = manifest, model
        self.train, self.test, heads = eval_splits(manifest)
        self.head, self.device = heads[0], resolve_device(manifest.runtime)

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        from hicl.evaluate.knn import monitor_top1

        if (run.epoch + 1) % self.manifest.runtime.knn_every:
            return
        top1 = monitor_top1(self.model.backbone, self.train, self.test, self.head, self.manifest, self.device)
        self.model.train()
        records.append({"kind": "knn", "epoch": run.epoch, "step": run.step, "head": self.head, "top1": top1})
        run.console.print(f"epoch {run.epoch + 1}: kNN top-1 {100 * top1:.1f} % ({self.head})")


class StopOnSignal(Callback):
    """SIGINT/SIGTERM set `run.stop_signal`, the same on every rank: under torchrun the ranks agree on it
    only at logging steps and epoch ends (a collective, so only where they synchronise already). An
    epoch's last step leaves the check to its epoch end."""

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.stack = ExitStack()

    def on_run_start(self, run: RunState) -> None:
        self.requested = self.stack.enter_context(stop_requests())

    def poll(self, run: RunState, check: bool) -> int | None:
        """A signal received, or a stop an earlier callback asked for (`run.stop_signal`)."""
        local = run.stop_signal or self.requested()
        if not self.distributed:
            return local
        return (max_over_ranks(local or 0, run.device) or None) if check else None

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        if run.epoch_step < run.steps_per_epoch:
            run.stop_signal = self.poll(run, record is not None)

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        run.stop_signal = self.poll(run, True)

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        close(self.stack, error)


class Checkpointing(Callback):
    """A checkpoint every `runtime.checkpoint_every` epochs, at the end, every `checkpoint_every_steps`
    steps mid-epoch, and before a run stops on a signal. `save(epochs_done, epoch_step)` writes it."""

    def __init__(self, save: Callable[[int, int], None]):
        self.save = save

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        every = run.manifest.runtime.checkpoint_every_steps
        if run.epoch_step < run.steps_per_epoch and (run.stop_signal is not None or (every and run.step % every == 0)):
            self.save(run.epoch, run.epoch_step)

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        done = run.epoch + 1
        if done % run.manifest.runtime.checkpoint_every == 0 or done == run.epochs or run.stop_signal is not None:
            self.save(done, 0)
