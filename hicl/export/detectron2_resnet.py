"""`--format detectron2`: the ResNet backbone in detectron2's naming, as the MoCo conversion does it.

    OUT/model.pkl     pickle of {"model": {name: numpy array}, "__author__": "hicl", "matching_heuristics": True}
    OUT/config.yaml   the config values these weights need (merge into a detectron2 config)

Key mapping from timm/torchvision names (`num_batches_tracked` dropped; there is no `fc`):

    conv1.*                    -> stem.conv1.*
    bn1.*                      -> stem.conv1.norm.*
    layer{i}.{b}.conv{j}.*     -> res{i+1}.{b}.conv{j}.*
    layer{i}.{b}.bn{j}.*       -> res{i+1}.{b}.conv{j}.norm.*
    layer{i}.{b}.downsample.0.* -> res{i+1}.{b}.shortcut.*
    layer{i}.{b}.downsample.1.* -> res{i+1}.{b}.shortcut.norm.*

`matching_heuristics` lets detectron2's checkpointer add the `backbone.bottom_up.` (FPN) or
`backbone.` (C4) prefix itself. The weights put the stride in the 3x3 convolution (torchvision style),
hence `STRIDE_IN_1X1: False`; inputs are RGB in 0-255, so the mean/std are hicl's times 255.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hicl.export.base import ExportOptions, ExportResult, ExportSource
from hicl.export.resnet_family import ResNetSpec, resnet_spec

WEIGHTS = "model.pkl"
CONFIG = "config.yaml"
STEM_MODULES = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
BLOCK_MODULES = {
    "conv1": "conv1", "conv2": "conv2", "conv3": "conv3",
    "bn1": "conv1.norm", "bn2": "conv2.norm", "bn3": "conv3.norm",
    "downsample.0": "shortcut", "downsample.1": "shortcut.norm",
}  # fmt: skip
BLOCK_KEY = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
STEM_KEY = re.compile(r"^(conv1|bn1)\.(\w+)$")


def check(source: ExportSource, options: ExportOptions) -> None:
    resnet_spec(source, "detectron2")


def detectron2_key(key: str) -> str:
    stem, block = STEM_KEY.match(key), BLOCK_KEY.match(key)
    if stem and stem.group(1) in STEM_MODULES:
        return f"{STEM_MODULES[stem.group(1)]}.{stem.group(2)}"
    if block and block.group(3) in BLOCK_MODULES:
        stage, index, module, leaf = block.groups()
        return f"res{int(stage) + 1}.{index}.{BLOCK_MODULES[module]}.{leaf}"
    raise ValueError(f"{key}: not a ResNet key detectron2 knows")


def detectron2_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        detectron2_key(k): v.detach().cpu().numpy()
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


def detectron2_config(source: ExportSource, spec: ResNetSpec, weights: Path) -> dict[str, Any]:
    normalize = source.manifest.augment.normalize
    return {
        "MODEL": {
            "WEIGHTS": str(weights),
            "PIXEL_MEAN": [round(255 * m, 3) for m in normalize.mean],
            "PIXEL_STD": [round(255 * s, 3) for s in normalize.std],
            "RESNETS": {
                "DEPTH": spec.depth,
                "NUM_GROUPS": spec.num_groups,
                "WIDTH_PER_GROUP": spec.width_per_group,
                "RES2_OUT_CHANNELS": spec.res2_out_channels,
                "STRIDE_IN_1X1": False,
                "NORM": "SyncBN",
            },
        },
        "INPUT": {"FORMAT": "RGB"},
    }


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    spec = resnet_spec(source, "detectron2")
    weights = out / WEIGHTS
    with weights.open("wb") as f:
        pickle.dump(
            {"model": detectron2_state(source.backbone_state), "__author__": "hicl", "matching_heuristics": True}, f
        )
    config = detectron2_config(source, spec, weights)
    text = yaml.safe_dump(config, sort_keys=False)
    (out / CONFIG).write_text(text)
    notes = ["detectron2 config values (also in config.yaml):", *text.rstrip().splitlines()]
    notes.append(
        "NORM: SyncBN (and FPN.NORM / ROI_BOX_HEAD.NORM SyncBN) fine-tunes the BN layers, as SSL detection "
        "transfer does; with one GPU use BN, FrozenBN only for a frozen-statistics comparison"
    )
    if spec.depth in (18, 34):
        notes.append("ResNet-18/34 in detectron2: FPN backbones only (no C4 head), RESNETS.RES5_DILATION 1")
    return ExportResult(files=[weights, out / CONFIG], notes=notes, record={"config": config})
