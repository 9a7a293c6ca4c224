"""What a result was computed from, recorded in every result file so two numbers can be compared honestly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hicl.manifest import Manifest, dump_manifest


def manifest_hash(manifest: Manifest) -> str:
    """sha256 (16 hex digits) of the resolved manifest as a run directory records it."""
    return hashlib.sha256(dump_manifest(manifest).encode()).hexdigest()[:16]


def file_sha256(path: Path | None) -> str | None:
    """sha256 of a weights file that is not a checkpoint (an export, a bare state dict); None for none."""
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance(
    manifest: Manifest, weights_sha256: str | None, fingerprints: dict[str, str], protocol: dict[str, Any]
) -> dict[str, Any]:
    """`weights_sha256`: of the weights evaluated (a checkpoint's is the one its load verified), None at
    random init; `fingerprints`: per split, `tensor_fingerprint` of the uint8 images evaluated."""
    return {
        "manifest_hash": manifest_hash(manifest),
        "checkpoint_hash": None if weights_sha256 is None else weights_sha256[:16],
        "data_fingerprint": fingerprints,
        "protocol": protocol,
    }
