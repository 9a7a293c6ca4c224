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
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hicl.augment.hierarchy import StageAugmenter
from hicl.data import load_split
from hicl.errors import HiclError
from hicl.manifest import Manifest
from hicl.models.network import build_model
from hicl.plots import save_loss_plot
from hicl.runs import RunDir, tensor_fingerprint
from hicl.train.checkpoint import load_checkpoint, save_checkpoint
from hicl.train.device import autocast, resolve_device, view_dtype
from hicl.train.optim import build_optimizer, lr_at, scaled_lr, set_lr

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


def pretrain(
    manifest: Manifest,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    init_from: Path | None = None,
) -> PretrainResult:
    console = console or Console(stderr=True)
    if manifest.runtime.threads:
        torch.set_num_threads(manifest.runtime.threads)
    device = resolve_device(manifest.runtime)

    train = load_split(manifest.data, "train")
    batch_size = manifest.optim.batch_size
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise HiclError(f"optim.batch_size: {batch_size} is larger than the {len(train)} training images")

    torch.manual_seed(manifest.seed)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    model = build_model(manifest, augmenter.embed_dim).to(device)
    if init_from is not None:
        from hicl.export.hicl_state import init_model_from  # only this option needs the export layer

        init_model_from(model, init_from)
    optimizer = build_optimizer(manifest.optim, model, model.method.fixed_lr_parameters())
    generators = {
        "order": torch.Generator().manual_seed(manifest.seed + ORDER_SEED_OFFSET),
        "augment": torch.Generator().manual_seed(manifest.seed + AUGMENT_SEED_OFFSET),
    }
    # Only now that the manifest has proven buildable does the run directory appear.
    run = RunDir(manifest.run_dir)
    run.start(manifest, resume=resume, overwrite=overwrite)
    run.write_env(manifest, device, tensor_fingerprint(train.images))
    start_epoch = 0
    if resume:
        start_epoch = load_checkpoint(run.last_checkpoint, model, optimizer, generators)["epoch"]
        run.truncate_metrics(after_step=start_epoch * steps_per_epoch)

    epochs = manifest.schedule.epochs
    total_steps = epochs * steps_per_epoch
    warmup_steps = manifest.schedule.warmup_epochs * steps_per_epoch
    base_lr = scaled_lr(manifest.optim)
    images = train.images.to(device)
    model.train()

    step = start_epoch * steps_per_epoch
    loss_value, rate, started = float("nan"), 0.0, time.perf_counter()
    with progress_bar(console, show_progress) as bar:
        task = bar.add_task(manifest.name, total=total_steps, completed=step, rate=0.0, losses="")
        for epoch in range(start_epoch, epochs):
            order = torch.randperm(len(train), generator=generators["order"])
            # Summed on the device: reading a loss back every step would stall a GPU run.
            epoch_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            tick, seen = time.perf_counter(), 0
            for index in order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size):
                lr = lr_at(step, total_steps, warmup_steps, base_lr)
                set_lr(optimizer, lr, base_lr)
                batch = augmenter(images[index.to(device)], generators["augment"])
                with autocast(manifest.runtime, device):
                    stage_losses = model.stage_losses(batch)
                    loss = model.total_loss(stage_losses)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                model.method.after_step()
                model.update_target(model.method.target_momentum(step, total_steps))
                step += 1
                epoch_loss_sum += loss.detach()
                seen += batch_size

                if step % manifest.runtime.log_every == 0 or step == total_steps:
                    stage_values = stage_losses.detach().cpu().tolist()
                    loss_value = check_finite(loss.item(), step)
                    rate = seen / (time.perf_counter() - tick)
                    run.log(
                        {"kind": "step", "epoch": epoch, "step": step, "lr": lr, "loss": loss_value,
                         "stage_losses": stage_values, "images_per_s": rate}
                    )
                    shown = " ".join(f"s{k + 1} {v:.3f}" for k, v in enumerate(stage_values))
                    bar.update(task, rate=rate, losses=f"loss {loss_value:.3f}  [{shown}]")
                bar.update(task, advance=1)

            rate = seen / (time.perf_counter() - tick)
            epoch_loss = check_finite(epoch_loss_sum.item() / steps_per_epoch, step)
            run.log({"kind": "epoch", "epoch": epoch, "step": step, "loss": epoch_loss, "images_per_s": rate})
            if (epoch + 1) % manifest.runtime.checkpoint_every == 0 or epoch + 1 == epochs:
                save_checkpoint(run.last_checkpoint, model, optimizer, generators, {"epoch": epoch + 1, "step": step})

    wall = time.perf_counter() - started
    save_loss_plot(run.read_metrics(), run.results / "loss.png")
    return PretrainResult(run.path, epochs, step, loss_value, rate, wall)
