"""The run directory: resolved manifest, environment record, metrics, checkpoints and results.

    runs/<name>/
      manifest.yaml   the manifest as resolved (defaults filled, overrides applied)
      env.json        versions, device, seed, command line, data fingerprint
      metrics.jsonl   one JSON object per logged step and per epoch
      checkpoints/last/   backbone.safetensors heads.safetensors trainer.safetensors meta.json
      results/        loss.png, linear-eval and later probe outputs
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

import hicl
from hicl.errors import HiclError
from hicl.manifest import Manifest, dump_manifest, load_manifest
from hicl.train.checkpoint import find_checkpoint


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

        self.manifest_path = self.path / "manifest.yaml"
        self.env_path = self.path / "env.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last"
        self.results = self.path / "results"

    def has_checkpoint(self) -> bool:
        return find_checkpoint(self.last_checkpoint) is not None

    def start(self, manifest: Manifest, resume: bool, overwrite: bool) -> None:
        """Create the directory for a new run, or check that a resumed one matches `manifest`."""
        if resume:
            if not self.has_checkpoint():
                raise HiclError(f"{self.path}: no checkpoint to resume from")
            recorded = load_manifest(self.manifest_path)
            if _training_settings(recorded) != _training_settings(manifest):
                raise HiclError(
                    f"{self.manifest_path}: the run was started with a different manifest; "
                    "on --resume only schedule.epochs, runtime and eval may change"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise HiclError(f"{self.path}: run directory exists; pass --resume to continue it or --overwrite")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(dump_manifest(manifest))

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
            "seed": manifest.seed,
            "command": sys.argv,
            "data": data,
        }
        self.env_path.write_text(json.dumps(record, indent=2) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past `after_step` (a resumed run repeats them from its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["step"] <= after_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_result(self, name: str, data: dict[str, Any]) -> Path:
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / name
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def open_run(target: Path | str, overrides: list[str] | None = None) -> tuple[RunDir, Manifest]:
    """A run from its directory (its resolved manifest) or from the manifest that names it."""
    target = Path(target)
    if target.is_dir():
        run = RunDir(target)
        if not run.manifest_path.is_file():
            raise HiclError(f"{target}: not a hicl run directory (no manifest.yaml)")
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
