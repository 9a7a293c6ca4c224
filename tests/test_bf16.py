"""`runtime.precision: bf16` (what a GPU run uses), run on the CPU: every method's hierarchical step with the
paper's choices (fused forward, per-view BN, reference adapter, colour embeddings, NHWC) computes in
bfloat16, keeps float32 weights, and gives the float32 step's stage losses to bf16's precision."""

from __future__ import annotations

import copy

import pytest
import torch

from hicl.augment.hierarchy import StageAugmenter
from hicl.manifest import Manifest, manifest_from_dict
from hicl.models.network import build_model
from hicl.train.device import prepare_model, view_dtype
from hicl.train.loop import train_step
from hicl.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["simsiam", "byol", "barlow_twins", "simclr", "moco_v2"]


def _manifest(method: str, precision: str) -> Manifest:
    return manifest_from_dict({
        "name": "bf16", "data": {"image_size": 32},
        "backbone": {"name": "resnet18"},
        "method": {"name": method, "proj_hidden_dim": 32, "proj_dim": 32,
                   **({"pred_hidden_dim": 8} if method in ("simsiam", "byol") else {}),
                   **({"queue_size": 64} if method == "moco_v2" else {})},
        "hierarchy": {"mode": "add_one", "forward": "fused", "bn": "per_view", "adapter": "reference",
                      "embeddings": {"ops": ["color_jitter"], "dim": "auto", "encoding": "reference"}},
        "optim": {"batch_size": 8},
        "runtime": {"device": "cpu", "precision": precision, "channels_last": True},
    })


def _step_losses(manifest: Manifest, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    batch = augmenter(images, torch.Generator().manual_seed(0))
    optimizer = build_optimizer(manifest.optim, model, [])
    _, stage_losses = train_step(model, model, optimizer, batch, manifest, torch.device("cpu"))
    return stage_losses.float()


@pytest.mark.parametrize("method", METHODS)
def test_a_bf16_step_computes_in_bfloat16_keeps_float32_weights_and_matches_fp32(method):
    bf16, fp32 = _manifest(method, "bf16"), _manifest(method, "fp32")
    embed_dim = StageAugmenter(bf16.hierarchy, bf16.augment, bf16.view_size).embed_dim
    torch.manual_seed(0)
    model = prepare_model(build_model(bf16, embed_dim), bf16.runtime, torch.device("cpu"))
    reference = copy.deepcopy(model)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    dtypes: list[torch.dtype] = []
    hook = model.backbone.conv1.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    low = _step_losses(bf16, model, images)
    hook.remove()
    high = _step_losses(fp32, reference, images)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # every stage's views ran the stem in bf16
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert low.shape == high.shape == (4,) and torch.isfinite(low).all()
    torch.testing.assert_close(low, high, rtol=0.08, atol=0.02 * max(1.0, high.abs().max().item()))
