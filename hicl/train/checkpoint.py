"""The write side of a checkpoint (the layout and the read side: `hicl.checkpoint`).

A checkpoint is written to `last.tmp/` and only then swapped in, so a crash while writing never
replaces a good checkpoint with a half-written one. meta.json records the SHA-256 of each .safetensors
file, which every load checks. Nothing hicl reads back is a pickle, so loading never runs code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import hicl
from hicl.checkpoint import BACKBONE, FILES, HEADS, META, TENSOR_FILES, TRAINER, Checkpoint, backbone_prefix, file_sha256
from hicl.errors import HiclError
from hicl.models.network import SSLModel

__all__ = ["FILES", "load_checkpoint", "save_checkpoint", "split_state"]


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a copy per tensor is cheap next to the I/O.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def split_state(model: SSLModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the backbone module's own state, with timm keys; the rest of the model's state)."""
    prefix = backbone_prefix(model)
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    return model.backbone.state_dict(), heads


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: Path,
    model: SSLModel,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    progress: dict[str, Any],
) -> None:
    """Write model, optimiser, generators and `progress` (into meta.json, with each file's SHA-256) to
    `directory`, through `directory.tmp` and a swap, so a failed write leaves the previous checkpoint."""
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    backbone, heads = split_state(model)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    rng = {f"rng.{name}": g.get_state() for name, g in generators.items()}
    rng["rng.torch"] = torch.get_rng_state()
    save_file(_contiguous(backbone), tmp / BACKBONE, metadata={"format": "pt"})
    save_file(_contiguous(heads), tmp / HEADS)
    save_file(_contiguous({**opt_tensors, **rng}), tmp / TRAINER)
    hashes = {name: file_sha256(tmp / name) for name in TENSOR_FILES}
    meta = {"hicl": hicl.__version__, **progress, "optimizer": opt_meta, "sha256": hashes}
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    checkpoint: Checkpoint,
    model: SSLModel,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> dict[str, Any]:
    """Restore model, optimiser and generators in place from an opened checkpoint; returns the progress
    saved with them (epoch, step, and for a mid-epoch checkpoint the position in the epoch and the
    epoch's running loss sums)."""
    found = checkpoint.path
    state = {backbone_prefix(model) + k: v for k, v in checkpoint.backbone_state().items()} | checkpoint.heads_state()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise HiclError(f"{found}: checkpoint does not match the manifest's model ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        wrong = (result.missing_keys or result.unexpected_keys)[0]
        raise HiclError(f"{found}: checkpoint does not match the manifest's model (first mismatch: {wrong})")
    trainer = checkpoint.trainer_state()
    try:
        _restore_optimizer(optimizer, trainer, checkpoint.meta["optimizer"])
        for name, generator in generators.items():
            generator.set_state(trainer[f"rng.{name}"])
        torch.set_rng_state(trainer["rng.torch"])
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise HiclError(f"{found}: trainer state does not match the manifest's optimiser ({str(exc)[:200]})") from None
    return checkpoint.progress
