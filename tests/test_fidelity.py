"""The reference code's choices (zhangjb416/Hierarchical-Augmentation): its stage adapter, per-view BatchNorm
and its colour-jitter parameter encoding."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hicl.augment.hierarchy import StageAugmenter, StageViews
from hicl.augment.pipeline import Pipeline, identity_params, param_vectors
from hicl.manifest import AugmentConfig, Manifest
from hicl.methods import METHODS
from hicl.models.adapters import ReferenceAdapter, channel_expansion
from hicl.models.backbone import select_stages
from hicl.models.heads import make_adapter
from hicl.models.network import SSLModel, build_model
from hicl.models.view_bn import convert_per_view, view_batches


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- adapter
# Counted on the reference's resnet_imagenet.py: parameters of prepare_attention{k} + attention{k} + scala{k}.
REFERENCE_ADAPTER_PARAMETERS = {
    "resnet50": [1_347_712, 1_409_280, 1_655_296],
    "resnet18": [545_920, 570_624, 669_184],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_ADAPTER_PARAMETERS))
def test_reference_adapter_has_the_reference_parameter_counts(name):
    model = timm.create_model(name, pretrained=False, num_classes=0)
    stages = select_stages(model, None, 4, name)
    expansion = channel_expansion(model)
    assert expansion == (4 if name == "resnet50" else 1)
    adapters = [
        make_adapter("reference", s.channels, model.num_features, s.reduction, stages[-1].reduction, expansion)
        for s in stages[:-1]
    ]
    counts = [sum(p.numel() for p in a.parameters()) for a in adapters]
    assert counts == REFERENCE_ADAPTER_PARAMETERS[name]


def test_reference_adapter_structure_and_odd_maps():
    adapter = ReferenceAdapter(256, 2048, num_blocks=3, expansion=4)
    depthwise = [m for m in adapter.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2 * (1 + 3)  # two per double block: the gate's and three halvings
    assert [m.stride for m in depthwise[::2]] == [(2, 2)] * 4 and all(m.stride == (1, 1) for m in depthwise[1::2])
    assert adapter.squeeze[0].out_channels == 64 and adapter.head[0].in_channels == 512
    adapter.eval()
    with torch.no_grad():
        for side in (8, 7):
            out = adapter(torch.randn(2, 256, side, side))
            assert out.shape == (2, 2048) and (out >= 0).all()  # ReLU before pooling


# ------------------------------------------------------------------------------------- per-view BN
def test_per_view_batchnorm_normalises_each_chunk_and_updates_running_stats_in_order():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(5, momentum=0.3)
    nn.init.uniform_(plain.weight)
    nn.init.uniform_(plain.bias)
    split = convert_per_view(nn.Sequential(nn.BatchNorm2d(5, momentum=0.3)))[0]
    split.load_state_dict(plain.state_dict())
    assert isinstance(split, nn.BatchNorm2d) and split.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(9, 5, 3, 3) * 2 + 1
    with view_batches(3):
        y = split(x)
    expected = torch.cat([plain(chunk) for chunk in x.split(3)])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.running_mean, plain.running_mean)
    torch.testing.assert_close(split.running_var, plain.running_var)
    assert split.num_batches_tracked.item() == 3
    # outside the context, and in eval mode, the layer is the plain layer
    torch.testing.assert_close(split(x), plain(x), atol=1e-5, rtol=1e-5)
    split.eval(), plain.eval()
    with view_batches(3):
        torch.testing.assert_close(split(x), plain(x))
    split.train()
    with view_batches(4), pytest.raises(ValueError, match="not a whole number of 4-row views"):
        split(x)


def _manifest(method: str, bn: str, forward: str = "separate") -> Manifest:
    return Manifest(
        name="t",
        backbone={"name": "resnet18"},
        method={"name": method, "proj_hidden_dim": 32, "proj_dim": 16}
        | ({"pred_hidden_dim": 8} if "pred_hidden_dim" in METHODS[method].Config.model_fields else {}),
        hierarchy={
            "mode": "add_one", "adapter": "reference", "bn": bn, "forward": forward,
            "embeddings": {"ops": ["color_jitter"], "dim": 8},
        },
        data={"image_size": 32},
    )


def _build(manifest: Manifest) -> tuple[SSLModel, StageViews]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size)
    batch = augmenter(images, gen)
    torch.manual_seed(0)
    model = build_model(manifest, augmenter.embed_dim).train()
    with torch.no_grad():  # timm zero-initialises each block's last BN weight; make those BNs matter too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None and not module.weight.any():
                module.weight.fill_(1.0)
    if model.target is not None:
        model.update_target(0.0)
    return model, batch


def _reference_order(net: nn.Module, batch: StageViews) -> list[list[torch.Tensor]]:
    """[view][stage] projections computed as the reference does: one call per stage and view, in the order
    stage 1 view a, stage 1 view b, stage 2 view a, ... (so running statistics move in the same order)."""
    out: list[list[torch.Tensor]] = [[], []]
    last = len(batch.views) - 1
    for k, (views, vectors) in enumerate(zip(batch.views, batch.param_vectors)):
        for half in (0, 1):
            x = views.chunk(2)[half]
            for index in range(k + 1):
                x = net.runner.run_segment(index, x)
            feature = net.adapters[k](x if k == last else net.runner._to_map(x))
            if str(k) in net.embedders:
                feature = torch.cat([feature, net.embedders[str(k)](vectors.chunk(2)[half])], dim=1)
            out[half].append(net.projectors[k](feature))
    return out


def _views_sent_separately(model: SSLModel, batch: StageViews) -> torch.Tensor:
    """The reference's way: every view through the (joint-BN) network on its own, then the same losses."""
    online = _reference_order(model.online, batch)
    targets = [[None] * len(online[0])] * 2
    if model.target is not None:
        with torch.no_grad():
            targets = _reference_order(model.target, batch)
    return torch.stack([
        model.method.stage_loss(k, online[0][k], online[1][k], targets[0][k], targets[1][k])
        for k in range(len(online[0]))
    ])


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if "running_" in n}


@pytest.mark.parametrize("method", ["simsiam", "byol", "barlow_twins"])
@pytest.mark.parametrize("forward", ["separate", "fused"])
def test_per_view_bn_loss_equals_sending_the_views_separately(method, forward):
    per_view, batch = _build(_manifest(method, "per_view", forward))
    separately, _ = _build(_manifest(method, "joint"))
    joint, _ = _build(_manifest(method, "joint", forward))
    assert type(per_view.online.adapters[0].squeeze[1]).__name__ == "PerViewBatchNorm2d"
    expected = _views_sent_separately(separately, batch)
    losses = per_view.stage_losses(batch)
    torch.testing.assert_close(losses, expected, atol=1e-5, rtol=1e-4)
    # the running statistics moved exactly as they would with the views sent one after the other
    mine, theirs = _bn_buffers(per_view), _bn_buffers(separately)
    assert mine.keys() == theirs.keys() and len(mine) > 100
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)
    # and the equality is not automatic: BN over both views together gives other losses
    assert not torch.allclose(joint.stage_losses(batch), expected, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------------- param encoding
def test_reference_encoding_is_the_raw_factors_with_identity_when_not_applied():
    cfg = AugmentConfig(color_jitter={"p": 0.5})
    params = Pipeline(["crop", "color_jitter"], cfg, 16)(
        torch.randint(0, 256, (64, 3, 20, 20), dtype=torch.uint8), torch.Generator().manual_seed(1)
    )[1]
    vectors = param_vectors(params, ["color_jitter"], cfg, (20, 20), encoding="reference")
    applied = params["color_applied"]
    assert 10 < applied.sum() < 54
    assert torch.equal(vectors[~applied], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(int((~applied).sum()), 4))
    assert torch.equal(vectors[applied], params["color_factors"][applied])
    low, high = vectors[applied].min(0).values, vectors[applied].max(0).values
    assert (low[:3] >= 0.6).all() and (high[:3] <= 1.4).all() and -0.1 <= low[3] and high[3] <= 0.1
    # against the normalised encoding: raw = identity + normalised * configured range
    normalized = param_vectors(params, ["color_jitter"], cfg, (20, 20))
    span = torch.tensor([0.4, 0.4, 0.4, 0.1])
    torch.testing.assert_close(vectors, torch.tensor([1.0, 1.0, 1.0, 0.0]) + normalized * span)


def test_reference_encoding_of_hand_parameters_and_ops_without_jitter():
    params = identity_params(3, (8, 8), "cpu")
    params["color_factors"] = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.2, 0.6, 1.3, -0.05], [0.7, 1.4, 0.9, 0.1]])
    vectors = param_vectors(params, ["flip", "color_jitter"], AugmentConfig(), (8, 8), encoding="reference")
    expected = torch.tensor([[0, 1, 1, 1, 0], [0, 1.2, 0.6, 1.3, -0.05], [0, 0.7, 1.4, 0.9, 0.1]])
    torch.testing.assert_close(vectors, expected)
    with pytest.raises(ValueError, match="unknown parameter encoding"):
        param_vectors(params, ["color_jitter"], AugmentConfig(), (8, 8), encoding="raw")


def test_manifest_defaults_reference_encoding_and_auto_dim_a_quarter_of_the_feature_width():
    manifest = Manifest(
        name="t",
        backbone={"name": "resnet18"},
        method={"name": "simsiam", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
        hierarchy={"mode": "add_one", "adapter": "pool_linear"},
        data={"image_size": 32},
    )
    assert manifest.hierarchy.embeddings.encoding == "reference" and manifest.hierarchy.embeddings.dim == "auto"
    gen = torch.Generator().manual_seed(0)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size)
    batch = augmenter(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen), gen)
    for k in (1, 2, 3):
        assert torch.equal(batch.param_vectors[k], batch.params[k]["color_factors"])
    model = build_model(manifest, augmenter.embed_dim)
    assert model.online.runner.out_features == 512
    assert model.online.embedders["1"].net[0].out_features == 128
    assert model.online.projectors[1][0].in_features == 512 + 128
