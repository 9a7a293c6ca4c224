"""Checkpoints as safetensors: nothing hicl reads back is a pickle, so loading never runs code.

    checkpoints/last/
      backbone.safetensors   the timm model's state_dict (timm keys, ready for export)
      heads.safetensors      everything else of the SSL model: adapters, embedders, projectors,
                             predictors, momentum target, queues
      trainer.safetensors    optimiser state tensors and random-generator states
      meta.json              epoch, step, optimiser hyper-parameters, hicl version, and the
                             SHA-256 of each .safetensors file

A checkpoint is written to `last.tmp/` and only then swapped in, so a crash while writing never
replaces a good checkpoint with a half-written one. Every load checks the files against the SHA-256
recorded in meta.json (a flipped bit names the file); `set_verification(False)` (the CLI's
`--no-verify`) skips that for huge checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import hicl
from hicl.errors import HiclError
from hicl.models.network import SSLModel

FILES = ("backbone.safetensors", "heads.safetensors", "trainer.safetensors", "meta.json")
_verify = {"enabled": True}


def set_verification(enabled: bool) -> None:
    """Whether loads check the SHA-256 recorded in meta.json (on by default)."""
    _verify["enabled"] = enabled


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a copy per tensor is cheap next to the I/O.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def backbone_prefix(model: SSLModel) -> str:
    """Where `model.backbone` sits in `model.state_dict()`, found by module identity, not by name."""
    for name, module in model.named_modules():
        if module is model.backbone:
            return f"{name}."
    raise ValueError("model.backbone is not a submodule of the model")


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
    progress: dict[str, int],
) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    backbone, heads = split_state(model)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    rng = {f"rng.{name}": g.get_state() for name, g in generators.items()}
    rng["rng.torch"] = torch.get_rng_state()
    save_file(_contiguous(backbone), tmp / "backbone.safetensors", metadata={"format": "pt"})
    save_file(_contiguous(heads), tmp / "heads.safetensors")
    save_file(_contiguous({**opt_tensors, **rng}), tmp / "trainer.safetensors")
    hashes = {name: file_sha256(tmp / name) for name in FILES if name.endswith(".safetensors")}
    meta = {"hicl": hicl.__version__, **progress, "optimizer": opt_meta, "sha256": hashes}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(directory: Path) -> Path | None:
    """`directory` if complete; else the previous one kept while a swap was interrupted."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    return None


def read_meta(found: Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint directory, checked for the keys a load needs."""
    path = found / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HiclError(f"{path}: not valid JSON (truncated or edited?)") from None
    if not isinstance(meta, dict):
        raise HiclError(f"{path}: expected a JSON object")
    missing = [k for k in ("epoch", "step", "optimizer") if k not in meta]
    if missing or not isinstance(meta["epoch"], int) or not isinstance(meta["step"], int):
        raise HiclError(f"{path}: {'missing key ' + repr(missing[0]) if missing else 'epoch/step are not integers'}")
    return meta


def checkpoint_progress(directory: Path) -> dict[str, int]:
    """(epoch, step) the checkpoint in `directory` has reached."""
    found = _require(directory)
    meta = read_meta(found)
    return {key: value for key, value in meta.items() if key not in ("hicl", "optimizer", "sha256")}


def _require(directory: Path) -> Path:
    found = find_checkpoint(directory)
    if found is None:
        raise HiclError(f"{directory}: no complete checkpoint (expected {', '.join(FILES)})")
    return found


def _load(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    expected = meta.get("sha256", {}).get(path.name) if isinstance(meta.get("sha256"), dict) else None
    if _verify["enabled"] and expected is not None and file_sha256(path) != expected:
        raise HiclError(
            f"{path}: SHA-256 does not match the one recorded in meta.json (the file is corrupt or was "
            "changed); pass --no-verify to load it anyway"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise HiclError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None


def load_backbone_state(directory: Path) -> dict[str, torch.Tensor]:
    found = _require(directory)
    return _load(found / "backbone.safetensors", read_meta(found))


def load_heads_state(directory: Path) -> dict[str, torch.Tensor]:
    found = _require(directory)
    return _load(found / "heads.safetensors", read_meta(found))


def load_checkpoint(
    directory: Path,
    model: SSLModel,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> dict[str, Any]:
    """Restore model, optimiser and generators in place; returns the progress saved with them (epoch,
    step, and for a mid-epoch checkpoint the position in the epoch and the epoch's running loss sums)."""
    found = _require(directory)
    meta = read_meta(found)
    backbone = _load(found / "backbone.safetensors", meta)
    state = {backbone_prefix(model) + k: v for k, v in backbone.items()} | _load(found / "heads.safetensors", meta)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise HiclError(f"{found}: checkpoint does not match the manifest's model ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        wrong = (result.missing_keys or result.unexpected_keys)[0]
        raise HiclError(f"{found}: checkpoint does not match the manifest's model (first mismatch: {wrong})")
    trainer = _load(found / "trainer.safetensors", meta)
    try:
        _restore_optimizer(optimizer, trainer, meta["optimizer"])
        for name, generator in generators.items():
            generator.set_state(trainer[f"rng.{name}"])
        torch.set_rng_state(trainer["rng.torch"])
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise HiclError(f"{found}: trainer state does not match the manifest's optimiser ({str(exc)[:200]})") from None
    return {key: value for key, value in meta.items() if key not in ("hicl", "optimizer", "sha256")}
