"""What every export shares: the source (run, manifest, checkpoint), the output folder and `export.json`.

The output folder holds the exported files and `export.json` (format, files, how to load them). An
existing folder is reused only with `--overwrite`, and then only the files its `export.json` lists are
removed; a folder with files hicl did not write is never touched. A failed export removes what it wrote.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file
from torch import nn

import hicl
from hicl.checkpoint import Checkpoint, find_checkpoint, open_checkpoint
from hicl.errors import HiclError
from hicl.export import EXPORTERS, check_format_name
from hicl.manifest import Manifest, dump_manifest
from hicl.models.backbone import create_backbone
from hicl.runs import RunDir, open_run

RECORD = "export.json"


@dataclass(frozen=True)
class ExportOptions:
    pth: bool = False  # torchvision: also write the .pth torchvision users expect
    dynamic_size: bool = False  # onnx: height and width are dynamic axes too (detection, segmentation)


@dataclass
class ExportResult:
    files: list[Path]
    notes: list[str] = field(default_factory=list)  # lines for the user: how to load, config values, checks
    record: dict[str, Any] = field(default_factory=dict)  # extra fields for export.json


class Exporter(Protocol):
    def check(self, source: ExportSource, options: ExportOptions) -> None: ...
    def export(self, source: ExportSource, out: Path, options: ExportOptions) -> ExportResult: ...


@dataclass
class ExportSource:
    """A finished (or checkpointed) run: its manifest and last complete checkpoint, opened once."""

    manifest: Manifest
    run: RunDir
    checkpoint: Checkpoint

    @classmethod
    def open(cls, target: Path, overrides: list[str] | None = None) -> ExportSource:
        run, manifest = open_run(target, overrides)
        if find_checkpoint(run.last_checkpoint) is None:
            raise HiclError(f"{run.path}: no complete checkpoint to export (pretrain the run first)")
        return cls(manifest, run, open_checkpoint(run.last_checkpoint))

    @property
    def backbone_state(self) -> dict[str, torch.Tensor]:
        return self.checkpoint.backbone_state()

    @property
    def progress(self) -> dict[str, int]:
        return self.checkpoint.progress

    @property
    def architecture(self) -> str:
        """The timm architecture without a pretrained tag (`resnet50.a1_in1k` -> `resnet50`)."""
        return self.manifest.backbone.name.split(".")[0]

    def backbone(self) -> nn.Module:
        """The trained timm model (no classifier), in eval mode."""
        model = create_backbone(self.manifest.backbone)
        model.load_state_dict(self.backbone_state)
        return model.eval()

    def heads_state(self) -> dict[str, torch.Tensor]:
        return self.checkpoint.heads_state()

    def metadata(self) -> dict[str, str]:
        """Provenance written into every exported file that has a header (safetensors, ONNX)."""
        m = self.manifest
        return {
            "architecture": m.backbone.name,
            "hicl": hicl.__version__,
            "manifest_sha256": hashlib.sha256(dump_manifest(m).encode()).hexdigest()[:16],
            "method": m.method.name,
            "hierarchy": m.hierarchy.mode,
            "epochs": str(self.progress["epoch"]),
            "steps": str(self.progress["step"]),
            "input_size": str(m.view_size),
            "mean": json.dumps(list(m.augment.normalize.mean)),
            "std": json.dumps(list(m.augment.normalize.std)),
            "small_stem": str(m.backbone.small_stem).lower(),
        }

    def refuse_small_stem(self, consumer: str) -> None:
        """A consumer that builds the architecture itself would build the standard stem: refuse."""
        if self.manifest.backbone.small_stem:
            raise HiclError(
                f"backbone.small_stem: {consumer} builds {self.architecture} with its standard 7x7/2 stem, "
                "so this small-stem backbone would not load there; use --format hicl or onnx"
            )


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    # safetensors refuses shared or strided storage: one contiguous copy per tensor.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def human_size(size: int) -> str:
    """Decimal units, as file managers show them."""
    value, unit = float(size), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create `out`, or empty an earlier export there (only with `overwrite`, only the files it wrote)."""
    if out.exists() and not out.is_dir():
        raise HiclError(f"--out: {out} is a file; expected a folder for the export")
    if out.is_dir() and any(out.iterdir()):
        record = out / RECORD
        if not record.is_file():
            raise HiclError(f"--out: {out} holds files hicl export did not write; choose a new or empty folder")
        if not overwrite:
            raise HiclError(f"--out: {out} already holds an export; pass --overwrite to replace it")
        try:
            written = json.loads(record.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            raise HiclError(f"--out: {record} is not an hicl export record; choose a new folder") from None
        for name in written:
            if isinstance(name, str) and Path(name).name == name:  # never follow a path out of the folder
                (out / name).unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hicl-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise HiclError(f"--out: cannot write to {out} ({exc.strerror or exc})") from None


def exporter(name: str) -> Exporter:
    check_format_name(name)
    return importlib.import_module(EXPORTERS[name].module)  # type: ignore[return-value]


def run_export(
    target: Path,
    format_name: str,
    out: Path,
    *,
    overwrite: bool = False,
    options: ExportOptions = ExportOptions(),
    overrides: list[str] | None = None,
) -> ExportResult:
    """Export the run `target` (run folder or manifest) as `format_name` into the folder `out`."""
    module = exporter(format_name)
    if options.pth and format_name != "torchvision":
        raise HiclError("--pth: only --format torchvision writes a .pth file")
    if options.dynamic_size and format_name != "onnx":
        raise HiclError("--dynamic-size: only --format onnx has input axes to make dynamic")
    source = ExportSource.open(target, overrides)
    module.check(source, options)
    prepare_out(out, overwrite)
    kept = {p.name for p in out.iterdir()}  # the user's own files beside an earlier export
    try:
        result = module.export(source, out, options)
        from hicl.export.card import write_card  # the card module reads the base module's types

        result.files += write_card(format_name, out, source, result)
    except BaseException:
        for path in out.iterdir():
            if path.name not in kept and path.is_file():
                path.unlink()
        raise
    result.files.append(out / RECORD)
    record = {
        "format": format_name,
        "files": [p.name for p in result.files],
        "source_run": str(source.run.path),
        "source_checkpoint": source.checkpoint.provenance(),
        **source.metadata(),
        **result.record,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return result
