"""`--format timm`: a folder timm loads as it is, and that a model hub takes unchanged.

    OUT/config.json          {"architecture", "num_classes": 0, "num_features", "model_args", "pretrained_cfg"}
    OUT/model.safetensors    the timm model's state_dict (no classifier), provenance in the header

`timm.create_model("local-dir:OUT", pretrained=True, num_classes=0)` reads `config.json` (timm's
`load_model_config_from_path`) and then the first of its preferred weight files, `model.safetensors`.
The `pretrained_cfg` carries what the backbone was trained with: input size, mean and std, so
`timm.data.resolve_data_config(model=model)` gives the right preprocessing. The same weights also load
with `pretrained_cfg_overlay=dict(file="OUT/model.safetensors")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from hicl.export.base import ExportOptions, ExportResult, ExportSource, save_tensors

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Keys of timm's own pretrained_cfg that describe the architecture, not the weights it came with.
KEPT_CFG_KEYS = ("first_conv", "classifier", "fixed_input_size")


def check(source: ExportSource, options: ExportOptions) -> None:
    source.refuse_small_stem("timm.create_model")


def pretrained_cfg(model: nn.Module, source: ExportSource) -> dict[str, Any]:
    """timm's pretrained_cfg for these weights: the architecture's keys plus hicl's training input."""
    default = dict(getattr(model, "pretrained_cfg", {}) or {})
    normalize = source.manifest.augment.normalize
    size = source.manifest.view_size
    cfg = {key: default[key] for key in KEPT_CFG_KEYS if key in default}
    cfg.update(
        input_size=[3, size, size],
        interpolation="bilinear",  # hicl resizes with antialiased bilinear interpolation
        crop_pct=1.0,  # and evaluates the whole image, no centre crop
        crop_mode="center",
        mean=list(normalize.mean),
        std=list(normalize.std),
        num_classes=0,
        description=f"hicl {source.manifest.method.name} pretraining, hierarchy {source.manifest.hierarchy.mode}",
    )
    return cfg


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    model = source.backbone()
    config = {
        "architecture": source.architecture,
        "num_classes": 0,
        "num_features": int(getattr(model, "num_features", 0)),
        "model_args": dict(source.manifest.backbone.kwargs),
        "pretrained_cfg": pretrained_cfg(model, source),
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    weights = save_tensors(source.backbone_state, out / WEIGHTS, {"format": "pt", **source.metadata()})
    kwargs = "".join(f", {k}={v!r}" for k, v in source.manifest.backbone.kwargs.items())
    local_dir = f'timm.create_model("local-dir:{out}", pretrained=True, num_classes=0)'
    overlay = (
        f"timm.create_model({source.architecture!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file={str(weights)!r}), num_classes=0{kwargs})"
    )
    return ExportResult(
        files=[out / CONFIG, weights],
        notes=[f"load with: {local_dir}", f"or with:   {overlay}"],
        record={"load": local_dir, "load_overlay": overlay},
    )
