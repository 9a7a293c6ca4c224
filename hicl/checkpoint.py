"""The read side of a checkpoint: open it once, verify each file against the SHA-256 recorded in meta.json
when it was written, hand back the states, the meta and the provenance. Training (resume), evaluation, the
probe and every export read through here; `hicl.train.checkpoint` writes.

    checkpoints/last/
      backbone.safetensors   the timm model's state_dict (timm keys, ready for export)
      heads.safetensors      everything else of the SSL model: adapters, embedders, projectors,
                             predictors, momentum target, queues
      trainer.safetensors    optimiser state tensors and random-generator states
      meta.json              epoch, step, optimiser hyper-parameters, hicl version, and the
                             SHA-256 of each .safetensors file

Each file is read once: its bytes are hashed and parsed from the same buffer, so a verified load costs
one read and one hash. `set_verification(False)` (the CLI's `--no-verify`) skips the hash for huge
checkpoints and memory-maps the files instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file
from torch import nn

from hicl.errors import HiclError

BACKBONE = "backbone.safetensors"
HEADS = "heads.safetensors"
TRAINER = "trainer.safetensors"
META = "meta.json"
FILES = (BACKBONE, HEADS, TRAINER, META)
TENSOR_FILES = (BACKBONE, HEADS, TRAINER)
_verify = {"enabled": True}


def set_verification(enabled: bool) -> None:
    """Whether loads check the SHA-256 recorded in meta.json (on by default)."""
    _verify["enabled"] = enabled


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (what meta.json records at write time)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone_prefix(model: nn.Module) -> str:
    """Where `model.backbone` sits in `model.state_dict()`, found by module identity, not by name."""
    for name, module in model.named_modules():
        if module is model.backbone:
            return f"{name}."
    raise ValueError("model.backbone is not a submodule of the model")


def find_checkpoint(directory: Path) -> Path | None:
    """`directory` if complete; else the previous one kept while a swap was interrupted."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    return None


def read_meta(found: Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint directory, checked for the keys a load needs."""
    path = found / META
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


@dataclass
class Checkpoint:
    """An opened checkpoint directory: its meta, and each tensor file read and verified on first use."""

    path: Path  # the complete directory found (`last/`, or `last.old/` after an interrupted swap)
    meta: dict[str, Any]
    _states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def progress(self) -> dict[str, Any]:
        """What training reached: epoch, step (and, mid-epoch, the position and running sums)."""
        return {key: value for key, value in self.meta.items() if key not in ("hicl", "optimizer", "sha256")}

    def recorded_sha256(self, name: str) -> str | None:
        hashes = self.meta.get("sha256")
        return hashes.get(name) if isinstance(hashes, dict) else None

    def sha256(self, name: str) -> str:
        """The SHA-256 of a tensor file: the one verified on load, else the recorded one (no second hash)."""
        if name not in self._digests:
            self.state(name)
        return self._digests[name]

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of `name` (one of TENSOR_FILES), read once and checked against meta.json."""
        if name not in self._states:
            self._states[name] = self._read(self.path / name)
        return self._states[name]

    def backbone_state(self) -> dict[str, torch.Tensor]:
        return self.state(BACKBONE)

    def heads_state(self) -> dict[str, torch.Tensor]:
        return self.state(HEADS)

    def trainer_state(self) -> dict[str, torch.Tensor]:
        return self.state(TRAINER)

    def provenance(self) -> dict[str, Any]:
        """Where the weights come from: the directory, the hicl version that wrote it, epoch, step, hashes."""
        return {"checkpoint": str(self.path), "hicl": self.meta.get("hicl"), "epoch": self.meta["epoch"],
                "step": self.meta["step"], "sha256": self.meta.get("sha256", {})}

    def _read(self, path: Path) -> dict[str, torch.Tensor]:
        expected = self.recorded_sha256(path.name)
        try:
            if not _verify["enabled"] and expected is not None:
                self._digests[path.name] = expected
                return load_file(path)
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if expected is not None and digest != expected:
                raise HiclError(
                    f"{path}: SHA-256 does not match the one recorded in meta.json (the file is corrupt or was "
                    "changed); pass --no-verify to load it anyway"
                )
            self._digests[path.name] = digest
            return load(data)
        except (SafetensorError, OSError) as exc:
            raise HiclError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None


def open_checkpoint(directory: Path) -> Checkpoint:
    """The complete checkpoint in `directory` (meta read and checked; tensors read on first use)."""
    found = find_checkpoint(Path(directory))
    if found is None:
        raise HiclError(f"{directory}: no complete checkpoint (expected {', '.join(FILES)})")
    return Checkpoint(found, read_meta(found))


def checkpoint_progress(directory: Path) -> dict[str, Any]:
    """(epoch, step, ...) the checkpoint in `directory` has reached (only meta.json is read)."""
    return open_checkpoint(directory).progress
