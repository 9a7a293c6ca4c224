"""`hicl plan`: what a run will cost, measured on its own model and data before it is launched.

`plan_run` builds data, model and optimiser exactly as `hicl pretrain` does (`hicl.train.loop.setup`),
then runs `warmup` untimed and `steps` timed training steps through the real loader (end-to-end), and
the same number again on one batch already in memory (the model step: augmentation, forward, backward,
optimiser). From these:

- images/s, end to end and for the model step, per process (times the processes for the job);
- the predicted epoch time (steps per epoch x the end-to-end step time) and the whole schedule's;
- peak memory: on CUDA the allocator's peak; on the CPU the process's peak RSS (and its growth over
  the RSS before the model and data were built); DataLoader workers are separate processes and are not
  counted;
- the checkpoint's size on disk (one is written to a temporary folder and measured);
- what the linear evaluation's feature cache needs per 10,000 images.

Nothing is written into the run directory. `fit_batch_search` tries batches in increasing powers of two
(times the process count) and keeps the largest whose peak stays under `HEADROOM` of the limit (a longer
run adds checkpoint writes and allocator fragmentation); ascending, because a process's peak RSS never
goes down.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from hicl.errors import HiclError
from hicl.manifest import Manifest
from hicl.runs import RunDir
from hicl.train.checkpoint import save_checkpoint
from hicl.train.loop import Trainer, setup
from hicl.train.dist import DistEnv

FEATURE_CACHE_IMAGES = 10_000  # the evaluation's cache is reported per this many images
HEADROOM = 0.9  # --fit-batch keeps the measured peak under this fraction of the limit


@dataclass(frozen=True)
class Plan:
    """One measured configuration (figures per process unless named otherwise)."""

    batch_size: int
    processes: int
    device: str
    steps_per_epoch: int
    epochs: int
    step_s: float  # end to end, through the loader
    model_step_s: float  # augmentation + forward + backward + optimiser on a batch in memory
    peak_bytes: int
    peak_growth_bytes: int  # CPU: peak RSS over the RSS before setup; CUDA: the allocator's peak
    memory_kind: str
    checkpoint_bytes: int
    feature_cache_bytes: int  # per FEATURE_CACHE_IMAGES images of the evaluated stage(s), float32

    @property
    def epoch_s(self) -> float:
        return self.step_s * self.steps_per_epoch

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.step_s

    @property
    def model_images_per_s(self) -> float:
        return self.batch_size / self.model_step_s

    def rows(self) -> list[tuple[str, str]]:
        job = f" ({self.processes} processes: {self.images_per_s:.0f} for the job)" if self.processes > 1 else ""
        per_process = self.batch_size // self.processes
        return [
            ("device", f"{self.device}, batch {self.batch_size} ({per_process} per process)"),
            ("images/s end to end", f"{self.images_per_s / self.processes:.1f} per process{job}"),
            ("images/s model step", f"{self.model_images_per_s / self.processes:.1f} per process"),
            ("epoch", f"{_duration(self.epoch_s)} ({self.steps_per_epoch} steps)"),
            ("whole schedule", f"{_duration(self.epoch_s * self.epochs)} ({self.epochs} epochs)"),
            ("peak memory", f"{human_bytes(self.peak_bytes)} {self.memory_kind} "
                            f"(+{human_bytes(self.peak_growth_bytes)} for the run)"),
            ("checkpoint", human_bytes(self.checkpoint_bytes)),
            ("linear-eval cache", f"{human_bytes(self.feature_cache_bytes)} per {FEATURE_CACHE_IMAGES:,} images"),
        ]


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5GB', '800M' -> bytes (binary multiples; GB and GiB alike)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(value[:-1]) * units[value[-1]]) if value and value[-1] in units else int(float(value))
    except ValueError:
        raise HiclError(f"--max-memory: {text!r} is not a size (e.g. 2GiB, 512MiB)") from None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _timed_steps(trainer: Trainer, batches, count: int) -> float:
    """Seconds per step over `count` steps drawn from `batches` (a loader or a repeated batch)."""
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _, batch in zip(range(count), batches):
        trainer.step(batch.images, batch.sizes)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / count


def _repeat(batch):
    while True:
        yield batch


def _epochs(trainer: Trainer):
    """The real loader's batches, epoch after epoch (a small data set has fewer batches than steps timed)."""
    while True:
        yield from trainer.train.epoch(trainer.generators["order"], trainer.manifest.optim.batch_size)


def _checkpoint_bytes(trainer: Trainer) -> int:
    with tempfile.TemporaryDirectory(prefix="hicl-plan-") as tmp:
        directory = Path(tmp) / "last"
        save_checkpoint(directory, trainer.model, trainer.optimizer, trainer.generators, {"epoch": 0, "step": 0})
        return sum(path.stat().st_size for path in directory.iterdir())


def _feature_cache_bytes(trainer: Trainer) -> int:
    runner, stage = trainer.model.online.runner, trainer.manifest.eval.stage
    widths = {"last": [runner.out_features], "all": [s.channels for s in runner.stages[:-1]] + [runner.out_features]}
    return FEATURE_CACHE_IMAGES * 4 * sum(widths.get(stage, [max(s.channels for s in runner.stages)]))


def plan_run(manifest: Manifest, env: DistEnv, device: torch.device, warmup: int = 2, steps: int = 5) -> Plan:
    """Measure `manifest` as it would run on `device` (see the module docstring)."""
    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = setup(manifest, env, device, RunDir(manifest.run_dir), Console(stderr=True), None)
    trainer.model.train()
    trainer.start_sums({})
    loader = _epochs(trainer)
    first = next(loader)
    _timed_steps(trainer, _repeat(first), warmup)
    step_s = _timed_steps(trainer, loader, steps)
    model_step_s = _timed_steps(trainer, _repeat(first), steps)
    if device.type == "cuda":
        peak = growth = torch.cuda.max_memory_allocated(device)
        kind = "CUDA allocator peak"
    else:
        peak = peak_rss_bytes()
        growth, kind = max(0, peak - rss_before), "peak RSS"
    return Plan(manifest.optim.batch_size, env.world_size, str(device), trainer.state.steps_per_epoch,
                manifest.schedule.epochs, step_s, model_step_s, peak, growth, kind, _checkpoint_bytes(trainer),
                _feature_cache_bytes(trainer))


def device_memory(device: torch.device) -> int:
    """What the device holds: CUDA's total memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def fit_batch_search(manifest: Manifest, env: DistEnv, device: torch.device, limit: int, console: Console,
              steps: int = 2) -> tuple[Plan | None, list[Plan]]:
    """The largest batch (a power of two, at least two per process) whose peak memory stays under `limit`."""
    tried: list[Plan] = []
    batch = 2 * env.world_size  # BatchNorm needs two images a view on each process
    while True:
        optim = manifest.optim.model_copy(update={"batch_size": batch})
        try:
            plan = plan_run(manifest.model_copy(update={"optim": optim}), env, device, warmup=1, steps=steps)
        except (torch.OutOfMemoryError, HiclError):  # the device or the data is too small for this batch
            break
        console.print(f"batch {batch}: peak {plan.peak_bytes / 2**20:.0f} MiB")
        if plan.peak_bytes > HEADROOM * limit:
            break
        tried.append(plan)
        batch *= 2
    return (tried[-1] if tried else None), tried


def plan_and_report(manifest: Manifest, console: Console, fit_batch: bool = False, max_memory: str | None = None,
                    steps: int = 5) -> Plan:
    """`hicl plan`: measure (and with `fit_batch`, search the batch) on this process's device; rank 0 prints."""
    from rich.table import Table

    from hicl.train.device import configure_host, resolve_device
    from hicl.train.dist import init_distributed, shutdown
    from hicl.train.optim import scaled_lr

    configure_host(manifest.runtime)
    env, device = init_distributed(resolve_device(manifest.runtime))
    try:
        if fit_batch:
            limit = parse_bytes(max_memory) if max_memory else device_memory(device)
            best, _ = fit_batch_search(manifest, env, device, limit, console)
            if best is None:
                raise HiclError(f"--fit-batch: not even a batch of {2 * env.world_size} stays under {HEADROOM:.0%} of "
                                f"{human_bytes(limit)}")
            optim = manifest.optim.model_copy(update={"batch_size": best.batch_size})
            manifest = manifest.model_copy(update={"optim": optim})
        result = plan_run(manifest, env, device, steps=steps)
    finally:
        shutdown()
    if env.rank == 0:
        table = Table(title=f"plan: {manifest.name} (measured over {steps} steps)", show_header=False)
        table.add_column("")
        table.add_column("")
        for row in result.rows():
            table.add_row(*row)
        Console().print(table)
        if fit_batch:
            console.print(f"fits: --set optim.batch_size={result.batch_size} (lr {scaled_lr(manifest.optim):.4g} "
                          f"by the manifest's scaling, optim.lr x batch / 256)")
    return result
