"""Tests for the staged backbone runner, the heads and the SSL model (`hicl.models`)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from hicl.augment.hierarchy import StageAugmenter, StageViews
from hicl.errors import HiclError
from hicl.manifest import BackboneConfig, Manifest
from hicl.methods import DEFAULT_METHOD, METHODS
from hicl.models.backbone import StageRunner, apply_small_stem, create_backbone, select_stages
from hicl.models.network import SSLModel, build_model
from method_sections import method_section, target_methods

# (model, input size): small inputs keep each forward cheap; 64 px where 32 px leaves too little at stride 32
BACKBONES = [("resnet18", 32), ("regnetx_002", 32), ("convnext_atto", 64), ("efficientnet_b0", 64)]
HAS_BATCHNORM = {"resnet18", "regnetx_002", "efficientnet_b0"}  # convnext normalises with LayerNorm


pytestmark = pytest.mark.usefixtures("one_thread")


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def runners() -> dict[str, StageRunner]:
    cache: dict[str, StageRunner] = {}

    def get(name: str) -> StageRunner:
        if name not in cache:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=0).eval()
            cache[name] = StageRunner(model, select_stages(model, None, 4, name), name)
        return cache[name]

    return get


def _module_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """model(x) and the outputs of the named submodules during that same call (forward hooks)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in names
    ]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


# ---------------------------------------------------------------------------------------- StageRunner
@pytest.mark.parametrize(("name", "size"), BACKBONES)
def test_stage_runner_matches_the_timm_model(runners, name, size):
    runner = runners(name)
    model = runner.model.eval()
    info = model.feature_info[-4:]
    assert [s.name for s in runner.stages] == [f["module"] for f in info]
    xs = [_randn(2, 3, size, size, seed=k) for k in range(4)]
    with torch.no_grad():
        outs = runner(xs)
        for k, x in enumerate(xs):
            reference, hooked = _module_outputs(model, [f["module"] for f in info], x)
            if k == 3:
                # the last stage runs through the model's own pooling head: exactly model(x)
                assert outs[k].shape == reference.shape == (2, model.num_features)
                assert torch.allclose(outs[k], reference, atol=1e-5, rtol=1e-5)
            else:
                f = info[k]
                expected_shape = (2, f["num_chs"], -(-size // f["reduction"]), -(-size // f["reduction"]))
                assert tuple(outs[k].shape) == expected_shape
                assert torch.allclose(outs[k], hooked[f["module"]], atol=1e-5, rtol=1e-5)
    assert runner.out_features == model.num_features


@pytest.mark.parametrize(("name", "size"), BACKBONES)
def test_fused_equals_separate_in_eval_mode_only_without_batchnorm_in_train(runners, name, size):
    runner = copy.deepcopy(runners(name))  # train mode updates BN running statistics: keep the cached one clean
    xs = [_randn(3, 3, size, size, seed=10 + k) for k in range(4)]  # different views per stage
    runner.eval()
    with torch.no_grad():
        separate, fused = runner(xs, fused=False), runner(xs, fused=True)
    for s, f in zip(separate, fused):
        assert s.shape == f.shape
        assert torch.allclose(s, f, atol=1e-5, rtol=1e-4)
    # In train mode BatchNorm normalises with the statistics of the batch it sees. Fused, the shared early
    # segments see the views of every stage still running, so the statistics (and outputs) differ from
    # running each stage's views alone. ConvNeXt has no batch statistics (LayerNorm): identical again.
    runner.train()
    with torch.no_grad():
        separate, fused = runner(xs, fused=False), runner(xs, fused=True)
    for k, (s, f) in enumerate(zip(separate, fused)):
        same = torch.allclose(s, f, atol=1e-5, rtol=1e-4)
        assert same == (name not in HAS_BATCHNORM), f"{name} stage {k + 1}"


def test_stage_runner_wrong_number_of_batches():
    model = timm.create_model("regnetx_002", num_classes=0)
    runner = StageRunner(model, select_stages(model, ["s3", "s4"], 0, "regnetx_002"), "regnetx_002")
    runner.eval()
    with torch.no_grad():
        assert len(runner([torch.zeros(2, 3, 32, 32)] * 2)) == 2
    with pytest.raises(ValueError, match="expected 2 stage batches, got 3"):
        runner([torch.zeros(2, 3, 32, 32)] * 3)


class _SkipNet(nn.Module):
    """Children a, b, c with feature_info, but forward adds a skip around b: not a sequence."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_info = [
            {"module": "a", "num_chs": 4, "reduction": 1},
            {"module": "b", "num_chs": 4, "reduction": 1},
        ]

    def forward(self, x):
        h = self.a(x)
        return self.c(h + self.b(h))


def test_non_sequential_backbone_is_a_hicl_error():
    net = _SkipNet()
    with pytest.raises(HiclError, match="skipnet_custom"):
        StageRunner(net, select_stages(net, None, 2, "skipnet_custom"), "skipnet_custom")
    # CaiT's class-attention blocks run on a token that joins after the patch blocks.
    cait = timm.create_model("cait_xxs24_224", num_classes=0)
    stages = select_stages(cait, None, 4, "cait_xxs24_224")
    with pytest.raises(HiclError, match="cait_xxs24_224.*not the sequence"):
        StageRunner(cait, stages, "cait_xxs24_224", probe_size=224)


def test_vit_is_tapped_as_equal_block_groups():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4).eval()
    stages = select_stages(vit, None, 4, "vit")
    assert [s.name for s in stages] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    runner = StageRunner(vit, stages, "vit", probe_size=32)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        separate = runner([x[:2], x[2:4], x[4:6], x[6:]])
        fused = runner([x[:2], x[2:4], x[4:6], x[6:]], fused=True)
        tokens = vit.blocks[:3](vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x[:2])))))
    expected_map = tokens[:, vit.num_prefix_tokens :].transpose(1, 2).reshape(2, 192, 8, 8)
    assert torch.allclose(separate[0], expected_map, atol=1e-5)
    assert torch.allclose(separate[3], vit(x[6:]), atol=1e-5)
    for a, b in zip(separate, fused):
        assert torch.allclose(a, b, atol=1e-5)


def test_backbone_rejecting_the_probe_size_is_a_hicl_error():
    # A ViT at a view size it does not accept: timm raises AssertionError from its size check, which
    # should become the same one-line HiclError (the CLI shows a traceback for anything else).
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    stages = select_stages(vit, None, 4, "vit_tiny_patch16_224")
    with pytest.raises(HiclError, match="vit_tiny_patch16_224"):
        StageRunner(vit, stages, "vit_tiny_patch16_224", probe_size=64)


def test_select_stages_errors_and_choices():
    model = timm.create_model("regnetx_002", num_classes=0)
    available = [f["module"] for f in model.feature_info]
    with pytest.raises(HiclError) as info:
        select_stages(model, ["s2", "layer9"], 2, "regnetx_002")
    msg = str(info.value)
    assert "'layer9'" in msg and "regnetx_002" in msg
    for name in available:
        assert name in msg
    with pytest.raises(HiclError, match="shallow to deep"):
        select_stages(model, ["s4", "s2"], 2, "regnetx_002")
    with pytest.raises(HiclError, match=f"has {len(available)} feature stages"):
        select_stages(model, None, len(available) + 1, "regnetx_002")
    assert [s.name for s in select_stages(model, None, 2, "regnetx_002")] == available[-2:]
    chosen = select_stages(model, ["s1", "s3"], 99, "regnetx_002")
    assert [(s.name, s.channels, s.reduction) for s in chosen] == [
        (f["module"], f["num_chs"], f["reduction"]) for f in model.feature_info if f["module"] in ("s1", "s3")
    ]
    with pytest.raises(HiclError, match="no feature_info"):
        select_stages(nn.Linear(2, 2), None, 1, "linear")


def test_build_model_with_unknown_stage_is_a_hicl_error():
    manifest = Manifest(
        name="t", backbone={"name": "regnetx_002"},
        hierarchy={"mode": "add_one", "stages": ["s1", "s2", "s3", "layer4"]},
    )
    with pytest.raises(HiclError, match="hierarchy.stages: regnetx_002 has no stage 'layer4'; expected some of stem"):
        build_model(manifest, 4)


# ----------------------------------------------------------------------------------------- small stem
def test_small_stem_on_resnet18():
    model = create_backbone(BackboneConfig(name="resnet18", small_stem=True)).eval()
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert (model.conv1.in_channels, model.conv1.out_channels) == (3, 64)
    assert isinstance(model.maxpool, nn.Identity)
    # the reductions in feature_info must match what the modules now really output
    names = [f["module"] for f in model.feature_info]
    with torch.no_grad():
        _, outs = _module_outputs(model, names, torch.zeros(1, 3, 32, 32))
    for f in model.feature_info:
        assert outs[f["module"]].shape[-1] == 32 // f["reduction"], f["module"]
    # and a tapped runner on it works at 32 px
    runner = StageRunner(model, select_stages(model, None, 4, "resnet18"), "resnet18", probe_size=32)
    assert runner.out_features == 512


def test_small_stem_on_non_resnet_is_a_hicl_error():
    with pytest.raises(HiclError, match="regnetx_002"):
        create_backbone(BackboneConfig(name="regnetx_002", small_stem=True))
    with pytest.raises(HiclError, match="small_stem"):
        apply_small_stem(timm.create_model("convnext_atto", num_classes=0), "convnext_atto")


# ------------------------------------------------------------------------------------------- SSLModel
def _manifest(method: str, **hierarchy) -> Manifest:
    return Manifest(
        name="t",
        backbone={"name": "resnet18"},
        method=method_section(method, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8, queue_size=64),
        hierarchy={"mode": "add_one", **hierarchy},
        data={"image_size": 32},
    )


def _batch(manifest: Manifest, seed: int = 0) -> tuple[StageViews, StageAugmenter]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size)
    return augmenter(images, gen), augmenter


def _activate_zero_init_bn(model: SSLModel) -> None:
    """timm's ResNet zero-initialises the last BN weight of every block (`zero_init_last`), so at init the
    residual branches output 0 and their convs get an exactly zero gradient; that is timm's choice, not
    hicl's wiring. Give those weights a value so every parameter is on a live gradient path."""
    with torch.no_grad():
        for module in model.online.modules():
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None and not module.weight.any():
                module.weight.fill_(1.0)


@pytest.fixture(scope="module")
def built():
    cache: dict[str, tuple[SSLModel, StageViews]] = {}

    def get(method: str) -> tuple[SSLModel, StageViews]:
        if method not in cache:
            manifest = _manifest(method)
            batch, augmenter = _batch(manifest)
            torch.manual_seed(0)
            model = build_model(manifest, augmenter.embed_dim)
            _activate_zero_init_bn(model)
            cache[method] = (model, batch)
        return cache[method]

    return get


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_parameter_gets_a_gradient_separate_and_fused(built, method):
    model, batch = built(method)
    model.train()
    assert isinstance(model.method, METHODS[method])
    for fused in (False, True):
        model.fused = fused
        model.zero_grad(set_to_none=True)
        losses = model.stage_losses(batch)
        assert losses.shape == (4,) and torch.isfinite(losses).all()
        model.total_loss(losses).backward()
        trainable = [
            (f"online.{n}", p) for n, p in model.online.named_parameters() if p.requires_grad
        ] + [(f"method.{n}", p) for n, p in model.method.named_parameters() if p.requires_grad]
        assert len(trainable) > 60
        missing = [n for n, p in trainable if p.grad is None or not p.grad.any()]
        assert not missing, f"{method} fused={fused}: no gradient for {missing}"
        if model.target is not None:
            for n, p in model.target.named_parameters():
                assert not p.requires_grad and p.grad is None, n
    assert (model.target is not None) == (method in target_methods())


@pytest.mark.parametrize("method", target_methods())
def test_update_target_is_an_exponential_moving_average(built, method):
    model = copy.deepcopy(built(method)[0])  # perturbed below: keep the shared model intact
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for b in model.online.buffers():
            if b.dtype.is_floating_point:
                b.add_(1.0)
    target_before = {n: p.detach().clone() for n, p in model.target.named_parameters()}
    online_now = {n: p.detach().clone() for n, p in model.online.named_parameters()}
    assert target_before.keys() == online_now.keys()
    assert any(not torch.equal(target_before[n], online_now[n]) for n in online_now)
    momentum = 0.9
    model.update_target(momentum)
    for n, t in model.target.named_parameters():
        expected = momentum * target_before[n] + (1 - momentum) * online_now[n]
        assert torch.allclose(t, expected, atol=1e-6, rtol=1e-5), n
        assert not t.requires_grad
    for (n, t), (n2, o) in zip(model.target.named_buffers(), model.online.named_buffers()):
        assert n == n2 and torch.equal(t, o), n
    # momentum 1 leaves the target where it is
    frozen = {n: p.detach().clone() for n, p in model.target.named_parameters()}
    model.update_target(1.0)
    assert all(torch.equal(p, frozen[n]) for n, p in model.target.named_parameters())


def test_target_is_a_separate_copy(built):
    # the runner keeps its segments in plain lists: the target's segments must be the target's modules
    model, batch = built(target_methods()[0])
    model = copy.deepcopy(model)  # perturbed below: keep the shared model intact
    model.eval()
    with torch.no_grad():
        before = model.target(batch.views, batch.param_vectors, False)
        for p in model.online.parameters():
            p.add_(1.0)
        after = model.target(batch.views, batch.param_vectors, False)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fused_and_separate_losses_are_equal_in_eval_mode(built, method):
    model, batch = built(method)
    model.eval()
    before = copy.deepcopy(model.method.state_dict())  # MoCo enqueues in its loss: same queue for both
    with torch.no_grad():
        model.fused = False
        separate = model.stage_losses(batch)
        model.method.load_state_dict(before)
        model.fused = True
        fused = model.stage_losses(batch)
    assert torch.allclose(separate, fused, atol=1e-4, rtol=1e-4), (separate, fused)


def test_total_loss_uses_the_loss_weights():
    method = METHODS[DEFAULT_METHOD](_manifest(DEFAULT_METHOD).method, 3)
    model = SSLModel(nn.Linear(1, 1), method, fused=False, loss_weights=[0.5, 2.0, 0.0])
    losses = torch.tensor([1.0, 3.0, 100.0])
    assert model.total_loss(losses).item() == pytest.approx(0.5 * 1.0 + 2.0 * 3.0 + 0.0 * 100.0)


# ------------------------------------------------------------------------------------------ embeddings
def _first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


def test_embedding_widens_projector_input_of_stages_two_to_four():
    manifest = _manifest(DEFAULT_METHOD, embeddings={"ops": ["color_jitter"], "dim": 8})
    batch, augmenter = _batch(manifest)
    torch.manual_seed(0)
    model = build_model(manifest, augmenter.embed_dim)
    width = timm.create_model("resnet18", num_classes=0).num_features
    assert sorted(model.online.embedders) == ["1", "2", "3"]
    assert _first_linear(model.online.projectors[0]).in_features == width
    for k in (1, 2, 3):
        assert _first_linear(model.online.projectors[k]).in_features == width + 8
        assert _first_linear(model.online.embedders[str(k)]).in_features == augmenter.embed_dim == 4
    losses = model.stage_losses(batch)
    assert losses.shape == (4,) and torch.isfinite(losses).all()


def test_embedding_at_explicit_stages_one_and_four():
    manifest = _manifest(DEFAULT_METHOD, embeddings={"ops": ["color_jitter"], "dim": 8, "stages": [1, 4]})
    batch, augmenter = _batch(manifest)
    assert [v is not None for v in batch.param_vectors] == [True, False, False, True]
    torch.manual_seed(0)
    model = build_model(manifest, augmenter.embed_dim)
    width = model.online.runner.out_features
    assert sorted(model.online.embedders) == ["0", "3"]
    widths = [_first_linear(p).in_features for p in model.online.projectors]
    assert widths == [width + 8, width, width, width + 8]
    losses = model.stage_losses(batch)
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    model.total_loss(losses).backward()
    for k in ("0", "3"):
        assert all(p.grad is not None and p.grad.any() for p in model.online.embedders[k].parameters())


def test_unknown_backbone_kwarg_is_a_hicl_error():
    from hicl.manifest import BackboneConfig
    from hicl.models.backbone import create_backbone

    with pytest.raises(HiclError, match="backbone.kwargs"):
        create_backbone(BackboneConfig(name="regnetx_002", kwargs={"no_such_argument": 1}))
