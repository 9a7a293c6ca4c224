"""Batched per-sample augmentation on the batch's device, returning the parameters of every view.

`hicl.augment.op` (the op record and registry) and `hicl.augment.ops` (the built-in ops) import without
torch; the pipeline names below load on first use, so that the manifest can import the ops cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

_PIPELINE_NAMES = ("Params", "Pipeline", "identity_params", "param_vector_dim", "param_vectors")

__all__ = ["ColorJitterParams", *_PIPELINE_NAMES]


def __getattr__(name: str) -> Any:
    if name in _PIPELINE_NAMES:
        return getattr(importlib.import_module("hicl.augment.pipeline"), name)
    if name == "ColorJitterParams":
        return importlib.import_module("hicl.augment.ops.color_jitter").ColorJitterParams
    raise AttributeError(f"module 'hicl.augment' has no attribute {name!r}")
