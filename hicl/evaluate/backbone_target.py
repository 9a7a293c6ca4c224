"""`hicl.load_backbone`: a pretrained backbone from a run, a checkpoint or an export folder, with the input
it expects (size, mean, std, evaluation crop), so that features are computed exactly as hicl computes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hicl.errors import HiclError
from hicl.evaluate.probe_target import open_probe_target
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


def load_backbone(target: str | Path) -> Backbone:
    """A run directory (or its manifest), a checkpoint directory, a `hicl export` folder of format timm or
    hicl, or a timm model name (random init): the backbone, SHA-256 verified where a hash is recorded."""
    opened = open_probe_target(str(target))
    manifest = opened.manifest
    path = Path(target)
    is_timm_export = path.is_dir() and (path / "export.json").is_file() and not (path / "hicl.safetensors").is_file()
    if is_timm_export:
        data_config = _export_data_config(path, manifest)
    else:
        normalize = manifest.augment.normalize
        data_config = DataConfig(manifest.view_size, tuple(normalize.mean), tuple(normalize.std), manifest.data.crop_pct)
    return Backbone(opened.backbone.eval(), data_config, manifest.backbone.name, manifest, opened.weights_sha256,
                    opened.label)
