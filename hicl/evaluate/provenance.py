"""What a result was computed from, recorded in every result file so two numbers can be compared honestly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hicl.manifest import Manifest, dump_manifest


def manifest_hash(manifest: Manifest) -> str:
    """sha256 (16 hex digits) of the resolved manifest as a run directory records it."""
    return hashlib.sha256(dump_manifest(manifest).encode()).hexdigest()[:16]


def file_hash(path: Path | None) -> str | None:
    """sha256 (16 hex digits) of a weights file; None for a randomly initialised backbone."""
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def provenance(
    manifest: Manifest, weights: Path | None, fingerprints: dict[str, str], protocol: dict[str, Any]
) -> dict[str, Any]:
    """`fingerprints`: per split, `tensor_fingerprint` of the uint8 images evaluated."""
    return {
        "manifest_hash": manifest_hash(manifest),
        "checkpoint_hash": file_hash(weights),
        "data_fingerprint": fingerprints,
        "protocol": protocol,
    }
