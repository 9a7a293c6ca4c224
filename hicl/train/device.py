"""Device, host and precision settings, and model preparation (SyncBN, channels_last, compile), from
the runtime section."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

import torch
from torch import nn

from hicl.errors import HiclError
from hicl.manifest import RuntimeConfig
from hicl.models.network import SSLModel
from hicl.train.dist import convert_sync_bn


def configure_host(runtime: RuntimeConfig) -> None:
    """This process's CPU settings: torch's thread count (`runtime.threads`) and, with
    `runtime.keep_freed_memory`, glibc's allocator (see `keep_freed_memory`)."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.keep_freed_memory:
        keep_freed_memory()


def keep_freed_memory() -> None:
    """glibc: serve every allocation from the heap and never give freed memory back to the OS.

    By default glibc maps each allocation over 32 MiB afresh and unmaps it when it is freed, so every
    such activation of every CPU step page-faults its memory in again: a stage's two views batched
    together (2B rows) cross that size at 128 px and more on ResNet-50. The process then keeps its peak
    memory for its lifetime, which a training process reaches at every step anyway. Process-wide; a
    no-op where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers (malloc.h)
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise HiclError("runtime.keep_freed_memory: the C library's mallopt refused the setting")


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


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a stage network: its views (first argument) in NHWC memory format."""
    views, *rest = args
    return ([v.contiguous(memory_format=torch.channels_last) for v in views], *rest)


def prepare_model(model: SSLModel, runtime: RuntimeConfig, device: torch.device) -> SSLModel:
    """`model` ready to train on `device`: SyncBN (`runtime.sync_bn`, with several processes), moved to
    the device, NHWC weights and inputs (`runtime.channels_last`), compiled stage networks (`runtime.compile`).

    Compilation is in place (`nn.Module.compile`), so parameter names and the module tree, hence
    checkpoints, are unchanged; graph breaks are logged as they happen and counted by `graph_breaks()`.
    Build the optimiser after this call (SyncBN conversion replaces modules).
    """
    if runtime.sync_bn:
        model = convert_sync_bn(model, device)
    model = model.to(device)
    networks = [n for n in (model.online, model.target) if n is not None]
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
        for network in networks:
            network.register_forward_pre_hook(_channels_last_inputs)
    if runtime.compile:
        enable_graph_break_logging()
        for network in networks:
            network.compile()
    return model


def enable_graph_break_logging() -> None:
    """Log every graph break torch.compile meets (with its reason), and never fall back to eager silently."""
    torch._logging.set_logs(graph_breaks=True, recompiles=True)
    torch._dynamo.config.suppress_errors = False


def graph_breaks() -> dict[str, int]:
    """Graph breaks met so far by torch.compile in this process: reason -> count."""
    return dict(torch._dynamo.utils.counters["graph_break"])
