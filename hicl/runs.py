"""The run directory: resolved manifest, environment record, metrics, checkpoints and results.

    runs/<name>/
      manifest.yaml   the manifest as resolved (defaults filled, overrides applied)
      env.json        versions, device, seed, command line, data fingerprint
      metrics.jsonl   one JSON object per logged step and per epoch
      checkpoints/last/   the last checkpoint (its files: hicl.checkpoint)
      results/        training.png, linear-eval, kNN, probe and export outputs
      loggers.json, tensorboard/, wandb/   with runtime.loggers: the tracker runs' ids, their local files
      outcome.json    how the last session ended (hicl.train.outcome): finished, stopped, diverged, failed
      .hicl.lock      the run lock (see hicl.lock): one writer at a time

hicl deletes or rewrites only the entries above, and only after proving that each one lies inside
the run directory (a symlink pointing elsewhere is refused); `--overwrite` never touches a foreign file.
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

import hicl
from hicl.collectives import world_size
from hicl.errors import HiclError
from hicl.lock import LOCK_NAME, RunLock
from hicl.checkpoint import checkpoint_progress, find_checkpoint
from hicl.manifest import Manifest, dump_manifest, load_manifest, plugin_records
from hicl.run_list import MANIFEST, check_run_target

# What hicl writes into a run directory; `--overwrite` removes exactly these (the lock stays: it is held).
HICL_ENTRIES = (MANIFEST, "env.json", "metrics.jsonl", "checkpoints", "results", "loggers.json", "tensorboard", "wandb",
                "outcome.json")
F = TypeVar("F", bound=Callable[..., Any])
_locks_taken: list[RunLock] = []


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

        self.manifest_path = self.path / MANIFEST
        self.env_path = self.path / "env.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last"
        self.results = self.path / "results"

    def has_checkpoint(self) -> bool:
        return find_checkpoint(self.last_checkpoint) is not None

    def check_can_start(self, resume: bool, overwrite: bool) -> None:
        """The cheap checks of `start`, made before data and model are built (no waiting for an error)."""
        if resume and overwrite:
            raise HiclError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
        if self.path.exists() and not self.path.is_dir():
            raise HiclError(f"{self.path}: exists and is not a directory")
        if resume:
            if not self.has_checkpoint():
                raise HiclError(f"{self.path}: no checkpoint to resume from")
            return
        if self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            if not overwrite:
                raise HiclError(f"{self.path}: run directory exists; pass --resume to continue it or --overwrite")
            if not self.manifest_path.is_file():
                raise HiclError(
                    f"{self.path}: not a hicl run directory (no manifest.yaml); "
                    "--overwrite only replaces hicl runs: choose another output.name"
                )

    def start(self, manifest: Manifest, resume: bool, overwrite: bool) -> None:
        """Lock the directory, then create it for a new run, or check that a resumed one matches
        `manifest` (and has not gone past its epochs). The lock is held until the enclosing
        `releases_run_locks` call ends."""
        self.check_can_start(resume, overwrite)  # before the lock file is written into a foreign directory
        self.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.path).acquire()
        _locks_taken.append(lock)
        self.check_can_start(resume, overwrite)
        for entry in HICL_ENTRIES:
            self.inside(self.path / entry)
        if resume:
            self.check_resumable(manifest)
        elif overwrite:
            for entry in HICL_ENTRIES:
                self._remove(self.path / entry)
        self.manifest_path.write_text(dump_manifest(manifest))

    def check_resumable(self, manifest: Manifest) -> None:
        """A resumed run must train what it started with and not have gone past `manifest`'s epochs."""
        recorded = load_manifest(self.manifest_path)
        if _training_settings(recorded) != _training_settings(manifest):
            raise HiclError(
                f"{self.manifest_path}: the run was started with a different manifest; "
                "on --resume only schedule.epochs, runtime and eval may change"
            )
        reached = checkpoint_progress(self.last_checkpoint)["epoch"]
        if reached > manifest.schedule.epochs:
            raise HiclError(
                f"schedule.epochs: the checkpoint has reached epoch {reached}; "
                f"resuming needs at least {reached} (got {manifest.schedule.epochs})"
            )

    def inside(self, path: Path) -> Path:
        """`path`, once proven to lie inside the run directory (after resolving symlinks)."""
        if not path.resolve().is_relative_to(self.path.resolve()) or path.resolve() == self.path.resolve():
            raise HiclError(f"{path}: points outside the run directory {self.path}; refusing to write or delete it")
        return path

    def _remove(self, path: Path) -> None:
        if path.is_symlink():
            self.inside(path).unlink()
        elif path.is_dir():
            shutil.rmtree(self.inside(path))
        elif path.exists():
            self.inside(path).unlink()

    def write_env(self, manifest: Manifest, device: torch.device, data: dict[str, Any]) -> None:
        """The environment record; `data` holds the data's fingerprint, how it is loaded, skipped files."""
        record = {
            "hicl": hicl.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "timm": _version("timm"),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "processes": world_size(),  # torchrun ranks; the batch is split over them
            "seed": manifest.seed,
            "command": sys.argv,
            "data": data,
            "plugins": plugin_records(manifest),  # the modules that registered augmentation ops
        }
        self.env_path.write_text(json.dumps(record, indent=2) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; a partial last line (a crash while appending) is dropped."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = None
                if number < len(lines):
                    raise HiclError(f"{self.metrics_path}: line {number} is not a JSON record") from None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif record is not None:
                raise HiclError(f"{self.metrics_path}: line {number} is not a metrics record")
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past `after_step` (a resumed run repeats them from its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["step"] <= after_step]
        self.inside(self.metrics_path).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_result(self, name: str, data: dict[str, Any]) -> Path:
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.inside(self.results / name)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def releases_run_locks(fn: F) -> F:
    """Decorator: run locks taken inside `fn` (by `RunDir.start`) are released when `fn` returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = len(_locks_taken)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_locks_taken) > depth:
                _locks_taken.pop().release()

    return wrapper  # type: ignore[return-value]


def open_run(target: Path | str, overrides: list[str] | None = None) -> tuple[RunDir, Manifest]:
    """A run from its directory (its resolved manifest) or from the manifest that names it."""
    target = Path(target)
    check_run_target(target)
    if target.is_dir():
        run = RunDir(target)
        return run, load_manifest(run.manifest_path, overrides)
    manifest = load_manifest(target, overrides)
    return RunDir(manifest.run_dir), manifest


def _training_settings(manifest: Manifest) -> dict[str, Any]:
    """What must not change when a run resumes (the training epochs may be extended)."""
    data = manifest.model_dump(mode="json", exclude={"runtime", "eval", "output"})
    data["schedule"].pop("epochs")
    return data


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
