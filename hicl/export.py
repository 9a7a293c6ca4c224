"""`hicl export`: the pretrained backbone in formats other tools load.

- `timm`: `model.safetensors` with the unwrapped timm model's state_dict keys, which loads with
  `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0)`,
  plus `export.json` saying how (and, for a small-stem backbone, how to rebuild the architecture).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from hicl.manifest import Manifest
from hicl.runs import RunDir
from hicl.train.checkpoint import load_backbone_state

FORMATS = ("timm",)


def export_timm(manifest: Manifest, run: RunDir, out_dir: Path) -> Path:
    state = load_backbone_state(run.last_checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.safetensors"
    save_file(state, weights, metadata={"format": "pt"})
    name = manifest.backbone.name
    extra = "".join(f", {k}={v!r}" for k, v in manifest.backbone.kwargs.items())
    load = (
        f"timm.create_model({name!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file={str(weights)!r}), num_classes=0{extra})"
    )
    record = {
        "format": "timm",
        "model": name,
        "kwargs": manifest.backbone.kwargs,
        "weights": weights.name,
        "load": load,
        "small_stem": manifest.backbone.small_stem,
    }
    if manifest.backbone.small_stem:
        record["note"] = (
            "the backbone has hicl's small-input stem: build it with "
            f"hicl.models.backbone.create_backbone(BackboneConfig(name={name!r}, small_stem=True)) "
            "and load_state_dict(safetensors.torch.load_file(weights)); plain timm.create_model does not fit"
        )
    (out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return weights
