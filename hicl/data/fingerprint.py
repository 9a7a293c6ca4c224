"""A data fingerprint: enough to tell whether two runs read the same data, cheap on large sets.

For file-based splits: the number of files, their total bytes, and a SHA-256 over the relative names,
sizes and full contents of a fixed sample of `SAMPLE_FILES` files spread evenly over the sorted list
(shards and array files: their first `HEAD_BYTES`). Generated data (synthetic) is hashed as decoded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from hicl.data.source import ArraySplit, FileSplit, SplitData, StreamSplit

SAMPLE_FILES = 64
HEAD_BYTES = 1 << 20


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def _files_fingerprint(files: list[Path], whole: bool) -> dict[str, Any]:
    sizes = [f.stat().st_size for f in files]
    common = Path(os.path.commonpath([str(f) for f in files])) if files else Path()
    step = max(1, len(files) // SAMPLE_FILES)
    digest = hashlib.sha256()
    for path, size in list(zip(files, sizes))[::step][:SAMPLE_FILES]:
        name = path.relative_to(common) if path != common else Path(path.name)
        digest.update(f"{name.as_posix()}:{size}\n".encode())
        with path.open("rb") as f:
            digest.update(f.read() if whole else f.read(HEAD_BYTES))
    return {"files": len(files), "bytes": sum(sizes), "sample_sha256": digest.hexdigest()[:16]}


def split_fingerprint(data: SplitData) -> dict[str, Any]:
    """The fingerprint of one opened split (see the module docstring)."""
    if isinstance(data, FileSplit):
        return {**_files_fingerprint(data.paths, whole=True), "images": len(data)}
    if isinstance(data, StreamSplit):
        return {**_files_fingerprint(data.shards, whole=False), "images": len(data)}
    assert isinstance(data, ArraySplit)
    if data.files:
        return {**_files_fingerprint(data.files, whole=False), "images": len(data.images)}
    return {"images": len(data.images), "pixels_sha256": tensor_fingerprint(data.images)}
