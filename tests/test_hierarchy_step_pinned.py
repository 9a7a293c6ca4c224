"""The hierarchical SimSiam step pinned to a recorded reference: same losses, gradients and BN statistics.

`tests/data/hierarchy_step_pinned.safetensors` holds what hicl's model code of commit 45ce2b8 computed
in float64 for one training-mode step of SimSiam with paper settings (add_one over 4 stages, the
reference adapter, colour embeddings on stages 2-4) on a narrow ResNet-18 (small stem, channels
4-8-16-32, 16 px views, 4 images per view): the initial state, the inputs, then per case the per-stage
losses, the gradient of every parameter and every BN running statistic after the forward. Any speed-up
of the stage runner, the heads or per-view BatchNorm must leave these unchanged. float64 keeps the
rounding of different CPUs (and of a reordered but equivalent computation) far below the tolerances.

Cases: `per_view` (hierarchy.bn: per_view; `separate` and `fused` forwards must both give it), and
`joint_separate` / `joint_fused` (hierarchy.bn: joint, where the two forwards differ by design); each
in NCHW and in the NHWC memory format of `runtime.channels_last` (weights and views), which must not
change them either.
Regenerate only on purpose: `PYTHONPATH=. python tests/test_hierarchy_step_pinned.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hicl.augment.hierarchy import StageViews
from hicl.manifest import Manifest, RuntimeConfig
from hicl.models.network import SSLModel, build_model
from hicl.train.device import prepare_model

FIXTURE = Path(__file__).parent / "data" / "hierarchy_step_pinned.safetensors"
VIEW_BATCH, SIZE, STAGES, EMBED_IN = 4, 16, 4, 4
CASES = {"per_view": ("per_view", None), "joint_separate": ("joint", "separate"), "joint_fused": ("joint", "fused")}

pytestmark = pytest.mark.usefixtures("one_thread")


def _manifest(bn: str, forward: str) -> Manifest:
    return Manifest(
        name="pinned",
        backbone={"name": "resnet18", "small_stem": True, "kwargs": {"channels": [4, 8, 16, 32], "stem_width": 4}},
        method={"name": "simsiam", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
        hierarchy={"mode": "add_one", "adapter": "reference", "bn": bn, "forward": forward,
                   "embeddings": {"ops": ["color_jitter"]}},
        data={"image_size": SIZE},
    )


def _model(bn: str, forward: str, state: dict[str, torch.Tensor], channels_last: bool = False) -> SSLModel:
    model = build_model(_manifest(bn, forward), EMBED_IN)
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    runtime = RuntimeConfig(device="cpu", channels_last=channels_last)
    return prepare_model(model.double(), runtime, torch.device("cpu")).train()


def _batch(inputs: dict[str, torch.Tensor]) -> StageViews:
    return StageViews(
        views=[inputs[f"view.{k}"] for k in range(STAGES)],
        params=[{} for _ in range(STAGES)],
        param_vectors=[inputs.get(f"vec.{k}") for k in range(STAGES)],
    )


def _step(model: SSLModel, batch: StageViews) -> dict[str, torch.Tensor]:
    """Per-stage losses, every parameter's gradient and every BN running statistic after one step."""
    model.zero_grad(set_to_none=True)
    losses = model.stage_losses(batch)
    model.total_loss(losses).backward()
    out = {"losses": losses.detach()}
    out |= {f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            out[f"running_mean.{name}"] = module.running_mean.clone()
            out[f"running_var.{name}"] = module.running_var.clone()
    return out


def _record() -> dict[str, torch.Tensor]:
    """The fixture: initial state (zero-initialised BN weights made live), inputs and each case's step."""
    torch.manual_seed(0)
    model = build_model(_manifest("per_view", "separate"), EMBED_IN)
    with torch.no_grad():
        for module in model.modules():  # timm zero-initialises the last BN of each block: no gradient there
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None and not module.weight.any():
                module.weight.fill_(0.5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    inputs = {f"view.{k}": torch.randn(2 * VIEW_BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
              for k in range(STAGES)}
    for k in range(1, STAGES):  # colour-jitter factors (b, c, s, h) as the reference encoding gives them
        factors = 0.6 + 0.8 * torch.rand(2 * VIEW_BATCH, 3, generator=gen, dtype=torch.float64)
        hue = 0.2 * torch.rand(2 * VIEW_BATCH, 1, generator=gen, dtype=torch.float64) - 0.1
        inputs[f"vec.{k}"] = torch.cat([factors, hue], dim=1)
    record = {f"state.{k}": v for k, v in state.items()} | {f"input.{k}": v for k, v in inputs.items()}
    for case, (bn, forward) in CASES.items():
        step = _step(_model(bn, forward or "separate", state), _batch(inputs))
        record |= {f"{case}.{k}": v.detach().contiguous() for k, v in step.items()}
    return record


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(FIXTURE)


def _part(recorded: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in recorded.items() if k.startswith(prefix + ".")}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("case", "forward"), [("per_view", "separate"), ("per_view", "fused"),
                                                ("joint_separate", "separate"), ("joint_fused", "fused")])
def test_hierarchical_simsiam_step_matches_the_recorded_one(recorded, case, forward, channels_last):
    bn = CASES[case][0]
    model = _model(bn, forward, _part(recorded, "state"), channels_last)
    produced = _step(model, _batch(_part(recorded, "input")))
    expected = _part(recorded, case)
    assert sorted(produced) == sorted(expected)
    assert len([k for k in expected if k.startswith("grad.")]) > 100
    for key, value in expected.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(produced[key], value, rtol=1e-7, atol=1e-9 * max(scale, 1e-3), msg=key)


def test_the_recorded_cases_differ_where_they_should(recorded):
    """The fixture can tell the cases apart: per-view and joint BN, and joint separate vs fused, differ."""
    losses = {case: recorded[f"{case}.losses"] for case in CASES}
    assert not torch.allclose(losses["per_view"], losses["joint_separate"], rtol=1e-4)
    assert not torch.allclose(losses["joint_separate"], losses["joint_fused"], rtol=1e-4)


if __name__ == "__main__":
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    save_file(_record(), str(FIXTURE), metadata={"recorded_by": "tests/test_hierarchy_step_pinned.py"})
    print(f"wrote {FIXTURE}", file=sys.stderr)
