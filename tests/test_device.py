"""Tests for hicl.train.device: `prepare_model` (channels_last, SyncBN with one process, graph breaks), `configure_host`."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from hicl.augment.hierarchy import StageViews
from hicl.manifest import RuntimeConfig
from hicl.methods import DEFAULT_METHOD, METHODS
from hicl.models.network import SSLModel
from hicl.train.device import graph_breaks, prepare_model


class TinyStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.proj = nn.Linear(6, 8)

    def forward(self, views, param_vectors, fused):
        self.seen_channels_last = views[0].is_contiguous(memory_format=torch.channels_last)
        return [self.proj(torch.relu(self.bn(self.conv(views[0]))).mean(dim=(2, 3)))]


def _model() -> SSLModel:
    torch.manual_seed(0)
    config = METHODS[DEFAULT_METHOD].Config
    sizes = {"proj_hidden_dim": 8, "proj_dim": 8, "pred_hidden_dim": 4}
    cfg = config(**{k: v for k, v in sizes.items() if k in config.model_fields})
    return SSLModel(TinyStages(), METHODS[DEFAULT_METHOD](cfg, 1), fused=False, loss_weights=[1.0])


def _batch() -> StageViews:
    views = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    return StageViews(views=[views], params=[{}], param_vectors=[None])


def test_channels_last_converts_weights_and_inputs_and_keeps_the_loss():
    plain = _model()
    nhwc = prepare_model(copy.deepcopy(plain), RuntimeConfig(device="cpu", channels_last=True), torch.device("cpu"))
    assert nhwc.online.conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = _batch()
    expected, got = plain(batch), nhwc(batch)
    assert nhwc.online.seen_channels_last and not plain.online.seen_channels_last
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(dict(nhwc.state_dict())) == list(dict(plain.state_dict()))


def test_sync_bn_with_one_process_keeps_plain_batchnorm():
    model = prepare_model(_model(), RuntimeConfig(device="cpu", sync_bn=True), torch.device("cpu"))
    assert isinstance(model.online.bn, nn.BatchNorm2d) and not isinstance(model.online.bn, nn.SyncBatchNorm)


def test_graph_breaks_are_counted_with_their_reason():
    def breaks(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        print("a print statement is a graph break")
        return y + 1

    before = sum(graph_breaks().values())
    torch._dynamo.reset()
    out = torch.compile(breaks, backend="eager")(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 3.0))
    assert sum(graph_breaks().values()) > before


_HOST_PROBE = """
import sys, torch
from hicl.manifest import RuntimeConfig
from hicl.train.device import configure_host

def mapped_outside_heap(nbytes):
    # anonymous mappings of at least nbytes that are not the brk heap
    with open("/proc/self/maps") as maps:
        sizes = [int(end, 16) - int(start, 16) for start, end, name in
                 ((*line.split()[0].split("-"), line.split()[-1]) for line in maps) if name != "[heap]"]
    return sum(size >= nbytes for size in sizes)

configure_host(RuntimeConfig(device="cpu", threads=1, keep_freed_memory=sys.argv[1] == "keep"))
before = mapped_outside_heap(48 * 2**20)
tensor = torch.empty(64 * 2**20, dtype=torch.uint8)  # over glibc's 32 MiB ceiling for heap allocations
print(torch.get_num_threads(), mapped_outside_heap(48 * 2**20) - before)
"""


def _host_probe(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _HOST_PROBE, mode], capture_output=True, text=True, check=True)
    return [int(value) for value in out.stdout.split()]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory configures glibc's allocator")
def test_configure_host_sets_threads_and_keeps_large_tensors_in_the_heap():
    threads, fresh_maps = _host_probe("default")
    assert threads == 1 and fresh_maps == 1  # glibc maps a 64 MiB allocation on its own
    threads, fresh_maps = _host_probe("keep")
    assert threads == 1 and fresh_maps == 0
