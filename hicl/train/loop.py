"""`hicl pretrain`: the training loop, top to bottom.

Per step: a batch of uint8 images (held on the training device) -> each stage's pair of views and
their parameters (hicl.augment) -> per-stage projections and losses (hicl.models, hicl.methods) ->
weighted sum -> optimiser step -> momentum-target update -> metrics. A checkpoint is written at the
end of every `runtime.checkpoint_every`-th epoch and at the end; random generators are saved with
it, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hicl.augment.hierarchy import StageAugmenter, StageViews
from hicl.data import ImageSet
from hicl.data.fingerprint import split_fingerprint
from hicl.data.loader import TrainData
from hicl.errors import HiclError
from hicl.manifest import Manifest
from hicl.models.network import SSLModel, build_model
from hicl.plots import save_training_plot
from hicl.runs import RunDir, releases_run_locks
from hicl.train.checkpoint import checkpoint_progress, load_checkpoint, save_checkpoint
from hicl.train.device import autocast, prepare_model, resolve_device, view_dtype
from hicl.train.dist import (
    DistEnv, gather_objects, init_distributed, max_over_ranks, mean_over_ranks, on_main, rank_seed, shutdown, wrap_ddp,
)
from hicl.train.health import check_health
from hicl.train.optim import build_optimizer, lr_at, scaled_lr, set_lr
from hicl.train.progress import LineProgress
from hicl.train.signals import Stopped, stop_requests

TRAINING_PLOT = "training.png"
ORDER_SEED_OFFSET = 1
AUGMENT_SEED_OFFSET = 2


@dataclass
class PretrainResult:
    run_dir: Path
    epochs: int
    steps: int
    final_loss: float
    images_per_s: float
    wall_s: float


def progress_bar(console: Console, enabled: bool) -> Progress:
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


def check_finite(loss: float, step: int) -> float:
    """The loss, or a clear error once training has diverged (checked before any checkpoint is written)."""
    if not math.isfinite(loss):
        raise HiclError(f"training diverged by step {step} (loss {loss}); lower optim.lr")
    return loss


@dataclass
class KnnMonitor:
    """kNN top-1 on the labeled splits, read once (evaluation transform) before training starts."""

    manifest: Manifest
    device: torch.device
    train: ImageSet
    test: ImageSet
    head: str

    def __call__(self, backbone: torch.nn.Module) -> float:
        from hicl.evaluate.knn import monitor_top1

        return monitor_top1(backbone, self.train, self.test, self.head, self.manifest, self.device)


def knn_monitor(manifest: Manifest) -> KnnMonitor:
    from hicl.evaluate.linear import eval_splits  # only runs that monitor need the evaluation layer

    train, test, heads = eval_splits(manifest)
    return KnnMonitor(manifest, resolve_device(manifest.runtime), train, test, heads[0])


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
) -> PretrainResult:
    """Train as the manifest says, in this process or, under torchrun, as one rank of the job."""
    if manifest.runtime.threads:
        torch.set_num_threads(manifest.runtime.threads)
    env, device = init_distributed(resolve_device(manifest.runtime))
    try:
        return _pretrain(manifest, env, device, resume, overwrite, console or Console(stderr=True), show_progress,
                         init_from)
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
    show_progress: bool, init_from: Path | None,
) -> PretrainResult:
    main = env.rank == 0  # rank 0 alone writes the run directory and draws progress
    run = RunDir(manifest.run_dir)
    run.check_can_start(resume, overwrite)
    if resume and (written_by := checkpoint_progress(run.last_checkpoint).get("processes", 1)) != env.world_size:
        raise HiclError(f"--resume: the checkpoint was written by {written_by} process(es); resume it with as many "
                        f"(torchrun --nproc_per_node), not {env.world_size}")
    batch_size = manifest.optim.batch_size
    if batch_size % env.world_size:
        raise HiclError(f"optim.batch_size: {batch_size} (the global batch) does not split over {env.world_size} processes")
    train = TrainData(manifest.data, device, env.rank, env.world_size)
    steps_per_epoch = train.steps_per_epoch(batch_size)
    if steps_per_epoch == 0:
        raise HiclError(f"optim.batch_size: {batch_size} is larger than the {len(train)} training images; "
                        f"set a smaller one, e.g. --set optim.batch_size={_fitting_batch(len(train), env.world_size)}")

    torch.manual_seed(manifest.seed)  # the same initial weights on every rank
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    model = build_model(manifest, augmenter.embed_dim)
    if init_from is not None:
        from hicl.export.hicl_state import init_model_from  # only this option needs the export layer

        init_model_from(model, init_from)
    model = prepare_model(model, manifest.runtime, device)
    optimizer = build_optimizer(manifest.optim, model, model.method.fixed_lr_parameters())
    trainer = wrap_ddp(model, device)
    generators = {
        # the same on every rank: one global order, of which each rank takes its share of every batch
        "order": torch.Generator().manual_seed(manifest.seed + ORDER_SEED_OFFSET),
        # the order generator as the current epoch began: a mid-epoch checkpoint redraws that epoch's order
        "epoch_order": torch.Generator(),
    }
    augment = torch.Generator().manual_seed(rank_seed(manifest.seed + AUGMENT_SEED_OFFSET, env.rank))
    monitor = knn_monitor(manifest) if manifest.runtime.knn_every and main else None
    # Only now that the manifest has proven buildable does the run directory appear.
    data_record = {"fingerprint": split_fingerprint(train.split), "loading": train.describe()}

    def start_run() -> None:
        run.start(manifest, resume=resume, overwrite=overwrite)
        run.write_env(manifest, device, data_record | skipped_record(train))

    on_main(start_run)
    progress: dict = {"epoch": 0, "step": 0}
    if resume:
        progress = load_checkpoint(run.last_checkpoint, model, optimizer, generators | {augment_key(env.rank): augment})
        if main:
            run.truncate_metrics(after_step=progress["step"])
        if progress.get("epoch_step"):
            generators["order"].set_state(generators["epoch_order"].get_state())
    start_epoch, resumed_step = progress["epoch"], progress.get("epoch_step", 0)
    if main:
        console.print(f"data: {train.describe()}{skipped_line(train)}"
                      + (f" on each of {env.world_size} processes" if env.distributed else ""))

    epochs = manifest.schedule.epochs
    total_steps = epochs * steps_per_epoch
    warmup_steps = manifest.schedule.warmup_epochs * steps_per_epoch
    base_lr = scaled_lr(manifest.optim)
    model.train()

    step = progress["step"]
    every_steps = manifest.runtime.checkpoint_every_steps
    loss_value, rate, started = float("nan"), 0.0, time.perf_counter()

    def checkpoint(epochs_done: int, epoch_step: int = 0) -> None:
        # every rank's augmentation generator, so that a resumed job restores each rank
        augment_states = gather_objects(augment.get_state())
        state = {"epoch": epochs_done, "step": step, "processes": env.world_size}
        if epoch_step:  # mid-epoch: where in the epoch, and the epoch's running sums for its record
            state |= {"epoch_step": epoch_step, "epoch_loss_sum": mean_over_ranks(epoch_loss_sum).item(),
                      "epoch_stage_sum": mean_over_ranks(epoch_stage_sum).tolist()}

        def save() -> None:
            check_health(model, step, run.read_metrics())
            saved = generators | {augment_key(r): torch.Generator().set_state(s) for r, s in enumerate(augment_states)}
            save_checkpoint(run.last_checkpoint, model, optimizer, saved, state)

        on_main(save)

    def stop_signal(stop_requested: Callable[[], int | None], check: bool) -> int | None:
        """The signal to stop on, the same on every rank: under torchrun the ranks agree on it only at
        `check` steps (a collective, so only at steps that already synchronise)."""
        if not env.distributed:
            return stop_requested()
        return (max_over_ranks(stop_requested() or 0, device) or None) if check else None

    with progress_bar(console, show_progress and main) as bar, stop_requests() as stop_requested:
        task = bar.add_task(manifest.name, total=total_steps, completed=step, rate=0.0, losses="")
        for epoch in range(start_epoch, epochs):
            first_step = resumed_step if epoch == start_epoch else 0
            generators["epoch_order"].set_state(generators["order"].get_state())
            # Summed on the device: reading a loss back every step would stall a GPU run. Under torchrun
            # the sums are this rank's; a mid-epoch checkpoint holds their mean over ranks.
            epoch_loss_sum = torch.tensor(progress.get("epoch_loss_sum", 0.0) if first_step else 0.0,
                                          dtype=torch.float64, device=device)
            epoch_stage_sum = torch.tensor(progress.get("epoch_stage_sum") if first_step else
                                           [0.0] * manifest.hierarchy.num_stages, dtype=torch.float64, device=device)
            tick, seen, skipped_before = time.perf_counter(), 0, len(train.skipped)
            batches = train.epoch(generators["order"], batch_size, first_step)
            for epoch_step, source in enumerate(batches, first_step + 1):
                lr = lr_at(step, total_steps, warmup_steps, base_lr)
                set_lr(optimizer, lr, base_lr)
                batch = augmenter(source.images, augment, source.sizes)
                loss, stage_losses = train_step(trainer, model, optimizer, batch, manifest, device)
                model.after_optimizer_step(step, total_steps)
                step += 1
                epoch_loss_sum += loss
                epoch_stage_sum += stage_losses
                seen += len(source.images) * env.world_size

                logging = step % manifest.runtime.log_every == 0 or step == total_steps
                if logging:
                    stage_values = mean_over_ranks(stage_losses).cpu().tolist()
                    loss_value = check_finite(mean_over_ranks(loss).item(), step)
                    rate = seen / (time.perf_counter() - tick)
                    if main:
                        run.log({"kind": "step", "epoch": epoch, "step": step, "lr": lr, "loss": loss_value,
                                 "stage_losses": stage_values, "images_per_s": rate})
                    shown = " ".join(f"s{k + 1} {v:.3f}" for k, v in enumerate(stage_values))
                    bar.update(task, rate=rate, losses=f"loss {loss_value:.3f}  [{shown}]")
                bar.update(task, advance=1)
                if epoch_step < steps_per_epoch:  # the epoch's last step is saved by the epoch end
                    signum = stop_signal(stop_requested, logging)
                    if signum is not None or (every_steps and step % every_steps == 0):
                        checkpoint(epoch, epoch_step)
                    if signum is not None:
                        raise Stopped(signum, step)

            rate = seen / (time.perf_counter() - tick)
            epoch_loss = check_finite(mean_over_ranks(epoch_loss_sum).item() / steps_per_epoch, step)
            epoch_stages = (mean_over_ranks(epoch_stage_sum) / steps_per_epoch).tolist()
            if main:
                run.log({"kind": "epoch", "epoch": epoch, "step": step, "lr": lr, "loss": epoch_loss,
                         "stage_losses": epoch_stages, "images_per_s": rate})
                if len(train.skipped) > skipped_before:
                    run.write_env(manifest, device, data_record | skipped_record(train))
                    console.print(f"data: epoch {epoch + 1}{skipped_line(train)}")
            if monitor is not None and (epoch + 1) % manifest.runtime.knn_every == 0:
                top1 = monitor(model.backbone)
                model.train()
                run.log({"kind": "knn", "epoch": epoch, "step": step, "head": monitor.head, "top1": top1})
                console.print(f"epoch {epoch + 1}: kNN top-1 {100 * top1:.1f} % ({monitor.head})")
            signum = stop_signal(stop_requested, True)
            if (epoch + 1) % manifest.runtime.checkpoint_every == 0 or epoch + 1 == epochs or signum is not None:
                checkpoint(epoch + 1)
            if signum is not None and epoch + 1 < epochs:
                raise Stopped(signum, step)

    wall = time.perf_counter() - started
    if main:
        save_training_plot(run.read_metrics(), run.results / TRAINING_PLOT)
    average_rate = (step - progress["step"]) * batch_size / wall if wall > 0 else 0.0
    return PretrainResult(run.path, epochs, step, loss_value, average_rate, wall)
