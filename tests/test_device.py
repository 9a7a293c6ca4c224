"""Tests for `prepare_model` (hicl.train.device): channels_last, SyncBN with one process, graph breaks."""

from __future__ import annotations

import copy

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
