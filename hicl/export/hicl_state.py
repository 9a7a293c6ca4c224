"""`--format hicl`: the whole SSL model and its resolved manifest, to start a new run from.

    OUT/hicl.safetensors   `backbone.*`: the timm model's state (timm keys); `heads.*`: the rest of the
                           SSLModel's state: stage adapters, augmentation embedders, projectors,
                           predictors (and the momentum target and queues where the method has them);
                           JSON metadata with the resolved manifest

No optimiser state and no random-generator state: `hicl pretrain MANIFEST --init-from OUT` loads the
model weights into the model MANIFEST builds (which must be the same model) and trains with a fresh
optimiser, e.g. to go on pretraining on new data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from hicl.checkpoint import backbone_prefix
from hicl.errors import HiclError
from hicl.export.base import ExportOptions, ExportResult, ExportSource, save_tensors
from hicl.manifest import Manifest, manifest_from_dict, manifest_to_dict

STATE = "hicl.safetensors"
MARKER = "hicl_state"  # metadata key that tells this file from other safetensors files


def check(source: ExportSource, options: ExportOptions) -> None:
    """Any run: hicl rebuilds whatever it trained."""


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    state = {f"backbone.{k}": v for k, v in source.backbone_state.items()}
    state |= {f"heads.{k}": v for k, v in source.heads_state().items()}
    metadata = {
        "format": "pt",
        MARKER: "1",
        **source.metadata(),
        "manifest": json.dumps(manifest_to_dict(source.manifest)),
    }
    path = save_tensors(state, out / STATE, metadata)
    return ExportResult(files=[path], notes=[f"start a run from it with: hicl pretrain MANIFEST --init-from {out}"])


def read_state(path: Path) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """The manifest and model state of an `--format hicl` export (its folder or its .safetensors file)."""
    path = Path(path)
    file = path / STATE if path.is_dir() else path
    expected = f"expected a folder written by `hicl export --format hicl` (with {STATE})"
    try:
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata() or {}
            if MARKER not in metadata:
                raise HiclError(f"--init-from: {path} is not an hicl state export; {expected}")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise HiclError(f"--init-from: cannot read {file} ({exc}); {expected}") from None
    return manifest_from_dict(json.loads(metadata["manifest"]), str(file)), tensors


def init_model_from(model: nn.Module, path: Path) -> Manifest:
    """Load an hicl state export into `model` (weights only); returns the manifest it was trained with."""
    manifest, tensors = read_state(path)
    # the backbone goes wherever this model keeps it, so a wrapped model loads the same file
    prefix = backbone_prefix(model)
    state = {
        (prefix + key.removeprefix("backbone.")) if key.startswith("backbone.") else key.removeprefix("heads."): value
        for key, value in tensors.items()
    }
    hint = "the manifest must build the same model (backbone, hierarchy, method heads) as the exported run"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise HiclError(f"--init-from: {path} does not fit: {first}; {hint}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise HiclError(f"--init-from: {path} does not fit ({first}); {hint}")
    return manifest
