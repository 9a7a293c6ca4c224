"""`hicl pretrain`: the training loop, top to bottom.

    pretrain(manifest)
      check_start     the run directory, --resume, batch and processes, loggers: cheap checks, nothing built
      finished_run    --resume of a run that has done its epochs: nothing to do, its figures
      setup           data, model, optimiser, generators (nothing written yet)
      run_callbacks   progress, kNN monitor, run record, loggers, stop signals, checkpoints (hicl.train.callbacks)
      Trainer.start   the run directory and env.json; --resume: model, optimiser and generators from the checkpoint
      run_epochs      per epoch: per step: train_step, then on_step_end; the epoch record, then on_epoch_end
      Trainer.result  the summary, counted over the whole run

Per step: a batch of uint8 images (held on the training device) -> each stage's pair of views and
their parameters (hicl.augment) -> per-stage projections and losses (hicl.models, hicl.methods) ->
weighted sum -> optimiser step -> momentum-target update -> metrics. Random generators are saved with
every checkpoint, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from hicl.augment.hierarchy import StageAugmenter, StageViews
from hicl.checkpoint import open_checkpoint
from hicl.data.fingerprint import split_fingerprint
from hicl.data.loader import TrainData
from hicl.errors import HiclError
from hicl.manifest import Manifest
from hicl.models.network import SSLModel, build_model
from hicl.runs import RunDir, releases_run_locks
from hicl.train.callbacks import (
    TRAINING_PLOT, Callback, Callbacks, Checkpointing, KnnMonitor, ProgressBar, RunRecord, RunState, StopOnSignal,
)
from hicl.train.checkpoint import load_checkpoint, save_checkpoint
from hicl.train.collapse import CollapseMonitor
from hicl.train.device import autocast, configure_host, prepare_model, resolve_device, view_dtype
from hicl.train.dist import DistEnv, gather_objects, init_distributed, mean_over_ranks, on_main, rank_seed, shutdown, wrap_ddp
from hicl.train.health import check_health
from hicl.train.loggers import check_loggers, logger_callbacks
from hicl.train.optim import build_optimizer, lr_at, scaled_lr, set_lr
from hicl.train.signals import Stopped

__all__ = ["TRAINING_PLOT", "PretrainResult", "pretrain", "train_step"]
ORDER_SEED_OFFSET = 1
AUGMENT_SEED_OFFSET = 2


@dataclass
class PretrainResult:
    """What a pretrain call did, counted over the whole run (earlier sessions of a resumed run included)."""

    run_dir: Path
    epochs: int
    steps: int
    final_loss: float
    images_per_s: float
    wall_s: float | None  # training seconds; None for a finished run whose checkpoint predates the record
    resumed_step: int | None = None  # where this session resumed the run
    nothing_left: bool = False  # --resume of a run that had done its epochs: nothing was trained

    def summary(self) -> str:
        """One line for the user."""
        loss = f"final loss {self.final_loss:.4f}" if math.isfinite(self.final_loss) else "no loss logged"
        time_s = "" if self.wall_s is None else f" in {self.wall_s:.0f} s"
        if self.nothing_left:
            return (f"nothing left to do: {self.run_dir} has done its {self.epochs} epochs ({self.steps} steps{time_s}, "
                    f"{loss}); raise schedule.epochs to train further")
        whole = "" if self.resumed_step is None else f"; whole run, resumed at step {self.resumed_step}"
        return (f"pretrained {self.steps} steps{time_s} ({self.images_per_s:.0f} img/s on average{whole}), "
                f"{loss} -> {self.run_dir}")


def check_finite(loss: float, step: int) -> float:
    """The loss, or a clear error once training has diverged (checked before any checkpoint is written)."""
    if not math.isfinite(loss):
        raise HiclError(f"training diverged by step {step} (loss {loss}); lower optim.lr")
    return loss


def skipped_record(train: TrainData, listed: int = 1000) -> dict:
    """The unusable files met so far, for env.json (the first `listed` named, with why)."""
    reasons = train.skipped.reasons
    return {"skipped_images": len(reasons), "skipped_files": dict(list(reasons.items())[:listed])}


def skipped_line(train: TrainData) -> str:
    count = len(train.skipped)
    return f"; skipped {count} unreadable file{'s' * (count != 1)} (listed in env.json)" if count else ""


def augment_key(rank: int) -> str:
    """The checkpoint name of a rank's augmentation generator (rank 0's keeps the single-process name)."""
    return "augment" if rank == 0 else f"augment.rank{rank}"


def train_step(
    trainer: torch.nn.Module, model: SSLModel, optimizer: torch.optim.Optimizer, batch: StageViews, manifest: Manifest,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on this process's share of the batch: (total loss, per-stage losses), on
    the device. `trainer` is `model` itself, or its DDP wrapper, whose call all-reduces the gradients."""
    with autocast(manifest.runtime, device):
        stage_losses = trainer(batch)
        loss = model.total_loss(stage_losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), stage_losses.detach()


@releases_run_locks
def pretrain(
    manifest: Manifest,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    init_from: Path | None = None,
    callbacks: list[Callback] | None = None,
) -> PretrainResult:
    """Train as the manifest says, in this process or, under torchrun, as one rank of the job.
    `callbacks` run on rank 0 after the built-in ones that log (see hicl.train.callbacks)."""
    configure_host(manifest.runtime)
    env, device = init_distributed(resolve_device(manifest.runtime))
    try:
        return _pretrain(manifest, env, device, resume, overwrite, console or Console(stderr=True, soft_wrap=True), show_progress,
                         init_from, callbacks or [])
    finally:
        shutdown()


def _fitting_batch(images: int, processes: int) -> int:
    """The largest power of two, a multiple of the process count, that fits `images` (at least one per process)."""
    batch = processes
    while batch * 2 <= images:
        batch *= 2
    return batch


def _pretrain(
    manifest: Manifest, env: DistEnv, device: torch.device, resume: bool, overwrite: bool, console: Console,
    show_progress: bool, init_from: Path | None, extra: list[Callback],
) -> PretrainResult:
    run = RunDir(manifest.run_dir)
    check_start(manifest, env, run, resume, overwrite)
    if resume and (finished := finished_run(manifest, run)) is not None:
        return finished
    trainer = setup(manifest, env, device, run, console, init_from)
    callbacks = run_callbacks(trainer, show_progress, extra)  # before the run directory appears: kNN splits load
    trainer.start(resume, overwrite)
    run_epochs(trainer, callbacks)
    return trainer.result()


def check_start(manifest: Manifest, env: DistEnv, run: RunDir, resume: bool, overwrite: bool) -> None:
    """What can be refused before data and model are built (no waiting for an error)."""
    run.check_can_start(resume, overwrite)
    if resume and (written_by := open_checkpoint(run.last_checkpoint).progress.get("processes", 1)) != env.world_size:
        raise HiclError(f"--resume: the checkpoint was written by {written_by} process(es); resume it with as many "
                        f"(torchrun --nproc_per_node), not {env.world_size}")
    batch_size = manifest.optim.batch_size
    if batch_size % env.world_size:
        raise HiclError(f"optim.batch_size: {batch_size} (the global batch) does not split over {env.world_size} processes")
    check_loggers(manifest.runtime.loggers)


def finished_run(manifest: Manifest, run: RunDir) -> PretrainResult | None:
    """For --resume of a run that has done all of `manifest`'s epochs: its figures (nothing is written)."""
    progress = open_checkpoint(run.last_checkpoint).progress
    if progress["epoch"] < manifest.schedule.epochs or progress.get("epoch_step"):
        return None
    run.check_resumable(manifest)
    logged = [r["loss"] for r in run.read_metrics() if r.get("kind") == "step" and isinstance(r.get("loss"), float)]
    loss = logged[-1] if logged else progress.get("loss")
    wall = progress.get("wall_s")
    rate = progress["step"] * manifest.optim.batch_size / wall if wall else 0.0
    return PretrainResult(run.path, progress["epoch"], progress["step"], float("nan") if loss is None else loss, rate,
                          wall, nothing_left=True)


def setup(manifest: Manifest, env: DistEnv, device: torch.device, run: RunDir, console: Console,
          init_from: Path | None) -> Trainer:
    """Data, model, optimiser and generators, in the order that makes every rank's numbers reproducible."""
    train = TrainData(manifest.data, device, env.rank, env.world_size)
    steps_per_epoch = train.steps_per_epoch(manifest.optim.batch_size)
    if steps_per_epoch == 0:
        batch = _fitting_batch(len(train), env.world_size)
        raise HiclError(f"optim.batch_size: {manifest.optim.batch_size} is larger than the {len(train)} training images; "
                        f"set a smaller one, e.g. --set optim.batch_size={batch}")
    torch.manual_seed(manifest.seed)  # the same initial weights on every rank
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    model = build_model(manifest, augmenter.embed_dim)
    if init_from is not None:
        from hicl.export.hicl_state import init_model_from  # only this option needs the export layer

        init_model_from(model, init_from)
    model = prepare_model(model, manifest.runtime, device)
    optimizer = build_optimizer(manifest.optim, model, model.method.fixed_lr_parameters())
    state = RunState(manifest, run, device, console, steps_per_epoch, env.world_size)
    return Trainer(manifest, env, train, augmenter, model, optimizer, state)


def run_callbacks(trainer: Trainer, show_progress: bool, extra: list[Callback]) -> Callbacks:
    """The run's callbacks: rank 0 alone writes the run directory, draws progress and logs; every rank
    takes part in stop signals and checkpoints (they synchronise the ranks)."""
    manifest, main = trainer.manifest, trainer.env.rank == 0
    # the collapse monitor first: it adds its figures to the step record the others show and log
    callbacks = [*([CollapseMonitor(trainer.model)] if main else []), ProgressBar(show_progress and main)]
    if main:
        if manifest.runtime.knn_every:
            callbacks.append(KnnMonitor(manifest, trainer.model))
        callbacks.append(RunRecord(lambda: len(trainer.train.skipped), trainer.rewrite_env))
        callbacks += logger_callbacks(manifest) + extra
    return Callbacks([*callbacks, StopOnSignal(trainer.env.distributed), Checkpointing(trainer.save)])


def run_epochs(trainer: Trainer, callbacks: Callbacks) -> None:
    """The epochs from where the run stands; every callback's `on_run_end` sees how it ended."""
    state = trainer.state
    trainer.model.train()
    state.started = time.perf_counter()
    try:
        callbacks.run_start(state)
        for epoch in range(state.epoch, state.epochs):
            state.epoch = epoch
            trainer.run_epoch(callbacks)
            callbacks.epoch_end(state, [trainer.epoch_record()])
            if state.stop_signal is not None and epoch + 1 < state.epochs:
                raise Stopped(state.stop_signal, state.step, state.stop_reason)
    except BaseException as error:
        callbacks.run_end(state, error)
        raise
    callbacks.run_end(state, None)


class Trainer:
    """What one run trains with (built by `setup`) and the steps of its loop; `state` is what callbacks see."""

    def __init__(self, manifest: Manifest, env: DistEnv, train: TrainData, augmenter: StageAugmenter,
                 model: SSLModel, optimizer: torch.optim.Optimizer, state: RunState):
        self.manifest, self.env, self.train, self.augmenter = manifest, env, train, augmenter
        self.model, self.optimizer, self.state = model, optimizer, state
        self.run, self.device = state.run, state.device
        self.ddp = wrap_ddp(model, state.device)  # what a step calls: DDP all-reduces the gradients
        self.generators = {
            # the same on every rank: one global order, of which each rank takes its share of every batch
            "order": torch.Generator().manual_seed(manifest.seed + ORDER_SEED_OFFSET),
            # the order generator as the current epoch began: a mid-epoch checkpoint redraws that epoch's order
            "epoch_order": torch.Generator(),
        }
        self.augment = torch.Generator().manual_seed(rank_seed(manifest.seed + AUGMENT_SEED_OFFSET, env.rank))
        self.base_lr = scaled_lr(manifest.optim)
        self.warmup_steps = manifest.schedule.warmup_epochs * state.steps_per_epoch
        self.data_record = {"fingerprint": split_fingerprint(train.split), "loading": train.describe()}
        self.progress: dict[str, Any] = {}

    def rewrite_env(self) -> str:
        """env.json with the skipped files met so far; the line that says how many."""
        self.run.write_env(self.manifest, self.device, self.data_record | skipped_record(self.train))
        return skipped_line(self.train)

    def start(self, resume: bool, overwrite: bool) -> None:
        """The run directory (rank 0); on --resume, model, optimiser and generators from the checkpoint."""
        main, state = self.env.rank == 0, self.state
        on_main(lambda: (self.run.start(self.manifest, resume=resume, overwrite=overwrite), self.rewrite_env()))
        if resume:
            self.progress = load_checkpoint(open_checkpoint(self.run.last_checkpoint), self.model, self.optimizer,
                                            self.generators | {augment_key(self.env.rank): self.augment})
            if main:
                self.run.truncate_metrics(after_step=self.progress["step"])
            if self.progress.get("epoch_step"):
                self.generators["order"].set_state(self.generators["epoch_order"].get_state())
            state.epoch, state.step = self.progress["epoch"], self.progress["step"]
            state.epoch_step, state.resumed_step = self.progress.get("epoch_step", 0), state.step
            state.loss, state.wall_before_s = self.progress.get("loss"), self.progress.get("wall_s", 0.0)
        if main:
            console = state.console
            console.print(f"data: {self.train.describe()}{skipped_line(self.train)}"
                          + (f" on each of {self.env.world_size} processes" if self.env.distributed else ""))
            if resume:
                console.print(f"resumed at step {state.step} of {state.total_steps} (epoch {state.epoch + 1})")

    def run_epoch(self, callbacks: Callbacks) -> None:
        """The steps of `state.epoch`, from `state.epoch_step` (a resumed mid-epoch position) on."""
        state, first_step = self.state, self.state.epoch_step
        self.generators["epoch_order"].set_state(self.generators["order"].get_state())
        self.start_sums(self.progress if first_step else {})
        batches = self.train.epoch(self.generators["order"], self.manifest.optim.batch_size, first_step)
        for epoch_step, source in enumerate(batches, first_step + 1):
            state.epoch_step = epoch_step
            callbacks.step_end(state, self.step(source.images, source.sizes))
            if state.stop_signal is not None and epoch_step < state.steps_per_epoch:  # else: at the epoch end
                raise Stopped(state.stop_signal, state.step, state.stop_reason)
        state.epoch_step = 0

    def start_sums(self, resumed: dict[str, Any]) -> None:
        """The epoch's running loss sums (from a mid-epoch checkpoint's, if resumed) and its clock."""
        # Summed on the device: reading a loss back every step would stall a GPU run. Under torchrun
        # the sums are this rank's; a mid-epoch checkpoint holds their mean over ranks.
        self.loss_sum = torch.tensor(resumed.get("epoch_loss_sum", 0.0), dtype=torch.float64, device=self.device)
        self.stage_sum = torch.tensor(resumed.get("epoch_stage_sum", [0.0] * self.manifest.hierarchy.num_stages),
                                      dtype=torch.float64, device=self.device)
        self.tick, self.seen = time.perf_counter(), 0

    def step(self, images: torch.Tensor, sizes: torch.Tensor | None) -> dict[str, Any] | None:
        """One training step; on logging steps its metrics.jsonl record (averaged over ranks)."""
        state = self.state
        state.lr = lr_at(state.step, state.total_steps, self.warmup_steps, self.base_lr)
        set_lr(self.optimizer, state.lr, self.base_lr)
        batch = self.augmenter(images, self.augment, sizes)
        loss, stage_losses = train_step(self.ddp, self.model, self.optimizer, batch, self.manifest, self.device)
        self.model.after_optimizer_step(state.step, state.total_steps)
        state.step += 1
        self.loss_sum += loss
        self.stage_sum += stage_losses
        self.seen += len(images) * self.env.world_size
        if state.step % self.manifest.runtime.log_every and state.step != state.total_steps:
            return None
        stage_values = mean_over_ranks(stage_losses).cpu().tolist()
        state.loss = check_finite(mean_over_ranks(loss).item(), state.step)
        return {"kind": "step", "epoch": state.epoch, "step": state.step, "lr": state.lr, "loss": state.loss,
                "stage_losses": stage_values, "images_per_s": self.seen / (time.perf_counter() - self.tick)}

    def epoch_record(self) -> dict[str, Any]:
        """The epoch's mean losses over ranks (checked finite), its images/s and seconds (this process's
        part of it, after a mid-epoch resume)."""
        state, steps = self.state, self.state.steps_per_epoch
        seconds = time.perf_counter() - self.tick
        rate = self.seen / seconds
        loss = check_finite(mean_over_ranks(self.loss_sum).item() / steps, state.step)
        stages = (mean_over_ranks(self.stage_sum) / steps).tolist()
        return {"kind": "epoch", "epoch": state.epoch, "step": state.step, "lr": state.lr, "loss": loss,
                "stage_losses": stages, "images_per_s": rate, "seconds": seconds}

    def save(self, epochs_done: int, epoch_step: int) -> None:
        """A checkpoint after `epochs_done` epochs and `epoch_step` steps of the next (0: at an epoch end)."""
        state = self.state
        # every rank's augmentation generator, so that a resumed job restores each rank
        augment_states = gather_objects(self.augment.get_state())
        progress = {"epoch": epochs_done, "step": state.step, "processes": self.env.world_size, "loss": state.loss,
                    "wall_s": round(state.wall_s, 3)}
        if epoch_step:  # mid-epoch: where in the epoch, and the epoch's running sums for its record
            progress |= {"epoch_step": epoch_step, "epoch_loss_sum": mean_over_ranks(self.loss_sum).item(),
                         "epoch_stage_sum": mean_over_ranks(self.stage_sum).tolist()}

        def write() -> None:
            check_health(self.model, state.step, self.run.read_metrics())
            saved = self.generators | {augment_key(r): torch.Generator().set_state(s) for r, s in enumerate(augment_states)}
            save_checkpoint(self.run.last_checkpoint, self.model, self.optimizer, saved, progress)

        on_main(write)

    def result(self) -> PretrainResult:
        state = self.state
        wall = state.wall_s
        rate = state.step * self.manifest.optim.batch_size / wall if wall > 0 else 0.0
        loss = float("nan") if state.loss is None else state.loss
        return PretrainResult(self.run.path, state.epochs, state.step, loss, rate, wall, state.resumed_step)
