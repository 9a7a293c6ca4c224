"""What `hicl probe-invariance` can analyse: a run, a checkpoint, a timm export or a bare timm model name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from hicl.errors import HiclError
from hicl.manifest import BackboneConfig, Manifest, format_validation_error, load_manifest
from hicl.models.backbone import create_backbone
from hicl.runs import open_run
from hicl.checkpoint import BACKBONE, find_checkpoint, open_checkpoint
from hicl.evaluate.provenance import file_sha256


@dataclass
class ProbeTarget:
    label: str
    manifest: Manifest  # the run's; a default one (synthetic data) for a checkpoint-less target
    backbone: nn.Module
    weights_sha256: str | None  # None: random initialisation
    results: Path | None  # the run's results directory, where the probe writes by default


def _load_weights(backbone: nn.Module, path: Path) -> None:
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise HiclError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise HiclError(f"{path}: weights do not fit the model ({first})") from None


def _default_manifest(label: str, backbone: BackboneConfig) -> Manifest:
    return Manifest(name=re.sub(r"[^A-Za-z0-9._-]", "_", label) or "probe", backbone=backbone)


def _from_run(path: Path) -> ProbeTarget:
    run, manifest = open_run(path)
    checkpoint = find_checkpoint(run.last_checkpoint)
    if checkpoint is None:
        raise HiclError(f"{path}: the run has no complete checkpoint yet")
    return _from_manifest(manifest, checkpoint, run.path.name, run.results)


def _from_manifest(manifest: Manifest, checkpoint: Path, label: str, results: Path | None) -> ProbeTarget:
    opened = open_checkpoint(checkpoint)
    backbone = create_backbone(manifest.backbone)
    backbone.load_state_dict(opened.backbone_state())  # SHA-256 verified, like every checkpoint load
    return ProbeTarget(label, manifest, backbone, opened.sha256(BACKBONE), results)


def _from_checkpoint(path: Path) -> ProbeTarget:
    """A checkpoint directory inside a run (runs/NAME/checkpoints/last): the run's manifest builds the model."""
    for parent in path.resolve().parents:
        if (parent / "manifest.yaml").is_file():
            return _from_manifest(load_manifest(parent / "manifest.yaml"), path, parent.name, None)
    raise HiclError(f"{path}: a checkpoint outside a run directory (no manifest.yaml above it)")


def _from_export(path: Path) -> ProbeTarget:
    """A `hicl export` folder: `--format hicl` (with the run's manifest) or `--format timm`."""
    try:
        record = json.loads((path / "export.json").read_text())
        kind = record["format"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise HiclError(f"{path / 'export.json'}: not a hicl export record ({exc.__class__.__name__})") from None
    if kind == "hicl":
        from hicl.export.hicl_state import STATE, read_state

        manifest, tensors = read_state(path)
        backbone = create_backbone(manifest.backbone)
        backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")})
        return ProbeTarget(path.name, manifest, backbone, file_sha256(path / STATE), None)
    if kind != "timm":
        raise HiclError(f"{path}: a {kind} export; probe the run itself, or its timm or hicl export")
    try:
        cfg = BackboneConfig(name=record["architecture"])
    except (KeyError, ValidationError) as exc:
        raise HiclError(f"{path / 'export.json'}: not a hicl timm export ({exc.__class__.__name__})") from None
    backbone = create_backbone(cfg)
    weights = path / "model.safetensors"
    _load_weights(backbone, weights)
    return ProbeTarget(path.name, _default_manifest(path.name, cfg), backbone, file_sha256(weights), None)


def from_model_name(name: str, weights: Path | None) -> ProbeTarget:
    try:
        cfg = BackboneConfig(name=name)
    except ValidationError as exc:
        raise HiclError(format_validation_error(exc, "TARGET").replace("TARGET: name", "TARGET")) from None
    manifest = _default_manifest(name, cfg)
    torch.manual_seed(manifest.seed)
    backbone = create_backbone(cfg)
    if weights is not None:
        _load_weights(backbone, weights)
    label = name if weights is None else f"{name}:{weights.stem}"
    return ProbeTarget(label, manifest, backbone, file_sha256(weights), None)


def open_probe_target(target: str, weights: Path | None = None) -> ProbeTarget:
    """Resolve TARGET: a run directory (or its manifest), a checkpoint directory, a `hicl export`
    folder, or a timm model name (random init, or `weights`: a safetensors state dict)."""
    path = Path(target)
    if weights is not None and path.exists():
        raise HiclError("--weights: only for a bare timm model name (a run or export brings its own weights)")
    if path.is_dir():
        if (path / "manifest.yaml").is_file():
            return _from_run(path)
        if (path / BACKBONE).is_file():
            return _from_checkpoint(path)
        if (path / "export.json").is_file():
            return _from_export(path)
        raise HiclError(f"{path}: not a run, checkpoint or export directory")
    if path.suffix in (".yaml", ".yml"):
        return _from_run(open_run(path)[0].path)
    if weights is not None and not weights.is_file():
        raise HiclError(f"--weights: {weights} not found")
    return from_model_name(target, weights)
