"""Device and precision choices from the manifest's runtime section."""

from __future__ import annotations

import contextlib

import torch

from hicl.errors import HiclError
from hicl.manifest import RuntimeConfig


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(runtime.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HiclError(f"runtime.device: {runtime.device} requested but CUDA is not available")
    return device


def autocast(runtime: RuntimeConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for; fp32 runs plain."""
    if runtime.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def view_dtype(runtime: RuntimeConfig) -> torch.dtype:
    return torch.bfloat16 if runtime.precision == "bf16" else torch.float32
