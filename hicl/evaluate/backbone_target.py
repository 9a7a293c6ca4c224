"""`hicl.load_backbone`: a pretrained backbone from a run, a checkpoint or an export folder, with the input
it expects (size, mean, std, evaluation crop), so that features are computed exactly as hicl computes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hicl.errors import HiclError
from hicl.evaluate.probe_target import ProbeTarget, from_model_name, open_probe_target
from hicl.manifest import Manifest, NormalizeConfig


@dataclass(frozen=True)
class DataConfig:
    """The input a backbone was trained with: square `input_size`, normalisation, evaluation `crop_pct`."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float

    @property
    def normalize(self) -> NormalizeConfig:
        return NormalizeConfig(mean=self.mean, std=self.std)

    def as_timm(self) -> dict[str, Any]:
        """timm's data-config keys (`timm.data.resolve_data_config`'s shape)."""
        return {"input_size": (3, self.input_size, self.input_size), "mean": self.mean, "std": self.std,
                "crop_pct": self.crop_pct, "interpolation": "bilinear"}


@dataclass
class Backbone:
    """A timm model in eval mode and what to feed it; `model, data_config = load_backbone(...)` unpacks."""

    model: nn.Module
    data_config: DataConfig
    name: str  # the timm architecture
    manifest: Manifest  # the run's; a default one for a timm export
    weights_sha256: str | None
    label: str

    def __iter__(self):
        return iter((self.model, self.data_config))


def _export_data_config(folder: Path, manifest: Manifest) -> DataConfig:
    """A timm export records its training input in export.json (its manifest is not exported)."""
    record = json.loads((folder / "export.json").read_text())
    try:
        return DataConfig(int(record["input_size"]), tuple(json.loads(record["mean"])), tuple(json.loads(record["std"])),
                          manifest.data.crop_pct)
    except (KeyError, ValueError, TypeError) as exc:
        raise HiclError(f"{folder / 'export.json'}: no input size, mean or std recorded ({exc.__class__.__name__})") from None


def _export_format(path: Path) -> str | None:
    try:
        return json.loads((path / "export.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _torchvision_export(folder: Path) -> ProbeTarget:
    """timm's plain ResNets use torchvision's module names, so the torchvision file loads into timm's model."""
    record = json.loads((folder / "export.json").read_text())
    weights = folder / f"{record.get('architecture', '?').split('.')[0]}.safetensors"
    if not weights.is_file():
        raise HiclError(f"{weights}: the torchvision export's weights are missing")
    target = from_model_name(str(record.get("architecture")), weights)
    return ProbeTarget(folder.name, target.manifest, target.backbone, target.weights_sha256, None)


def load_backbone(target: str | Path) -> Backbone:
    """A run directory (or its manifest), a checkpoint directory, a `hicl export` folder of format timm,
    torchvision or hicl, or a timm model name (random init): the backbone, SHA-256 verified where a hash is
    recorded (ONNX and detectron2 exports are for their own runtimes)."""
    path = Path(target)
    kind = _export_format(path) if path.is_dir() and not (path / "manifest.yaml").is_file() else None
    opened = _torchvision_export(path) if kind == "torchvision" else open_probe_target(str(target))
    manifest = opened.manifest
    if kind in ("timm", "torchvision"):
        data_config = _export_data_config(path, manifest)
    else:
        normalize = manifest.augment.normalize
        data_config = DataConfig(manifest.view_size, tuple(normalize.mean), tuple(normalize.std), manifest.data.crop_pct)
    return Backbone(opened.backbone.eval(), data_config, manifest.backbone.name, manifest, opened.weights_sha256,
                    opened.label)
