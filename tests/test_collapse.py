"""Collapse figures against an independent numpy computation, and the alarm's counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hicl.representation import effective_rank, spread, view_cosine
from hicl.train.collapse import CollapseAlarm, StageHealth, stage_health

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_spread(z: np.ndarray) -> float:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    return float(unit.std(axis=0).mean() * math.sqrt(z.shape[1]))


def numpy_effective_rank(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture
def embeddings() -> torch.Tensor:
    # anisotropic on purpose: the rank is neither 1 nor d
    scales = torch.linspace(0.05, 2.0, 24)
    return torch.randn(200, 24, generator=torch.Generator().manual_seed(0)) * scales


def test_spread_and_rank_match_numpy(embeddings):
    z = embeddings.numpy()
    assert spread(embeddings).item() == pytest.approx(numpy_spread(z), rel=1e-4)
    assert effective_rank(embeddings).item() == pytest.approx(numpy_effective_rank(z), rel=1e-3)
    a, b = embeddings[:100], embeddings[100:]
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert view_cosine(a, b).item() == pytest.approx(cos.mean().item(), abs=1e-6)


def test_healthy_and_collapsed_extremes():
    healthy = torch.randn(4096, 32, generator=torch.Generator().manual_seed(1))
    assert spread(healthy).item() == pytest.approx(1.0, abs=0.05)
    assert effective_rank(healthy).item() > 30  # of 32
    constant = torch.ones(256, 32) * torch.linspace(-1, 1, 32)
    assert spread(constant).item() == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(constant).item() == pytest.approx(1.0, abs=1e-3)
    figures = stage_health(constant[:128], constant[128:])
    assert figures[2].item() == pytest.approx(1.0, abs=1e-6)  # identical views


def test_the_alarm_needs_patience_consecutive_low_checks_per_stage():
    alarm = CollapseAlarm(threshold=0.1, patience=3)
    low, high = StageHealth(0.01, 1.0, 1.0), StageHealth(0.9, 10.0, 0.5)
    assert alarm.update([low, high]) == []
    assert alarm.update([low, high]) == []
    assert alarm.update([high, low]) == []  # stage 0 recovered: its count restarts
    assert alarm.update([low, low]) == []
    assert alarm.update([low, low]) == [1]  # stage 1: three low checks in a row
    assert alarm.update([low, low]) == [0]  # stage 0 too; stage 1 fires once


# ------------------------------------------------------------------------------------- during training
TINY = {
    "name": "tiny",
    "data": {"image_size": 32, "synthetic": {"num_train": 32, "num_test": 32}},
    "backbone": {"name": "regnetx_002"},
    "method": {"name": "simsiam", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "hierarchy": {"mode": "add_one", "groups": [["crop"], ["color_jitter"], ["flip"]]},
    "augment": {"ops": ["crop", "color_jitter", "flip"]},
    "optim": {"batch_size": 16},
    "schedule": {"epochs": 2},
    "runtime": {"log_every": 1, "health_every": 2, "device": "cpu"},
    "eval": {"epochs": 1},
}


def _run(tmp_path, **runtime):
    import yaml
    from typer.testing import CliRunner

    from hicl.cli import app

    manifest = {**TINY, "runtime": {**TINY["runtime"], **runtime}, "output": {"dir": str(tmp_path)}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return CliRunner().invoke(app, ["pretrain", str(path), "--no-progress"])


def _health_records(tmp_path):
    import json

    lines = (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step" and "spread" in r]


def test_a_healthy_run_logs_every_stages_figures_on_its_check_steps_and_never_warns(tmp_path):
    result = _run(tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    checked = _health_records(tmp_path)
    assert [r["step"] for r in checked] == [2, 4]  # 2 steps an epoch, every 2nd
    for record in checked:
        assert len(record["spread"]) == len(record["effective_rank"]) == len(record["view_cosine"]) == 3
        assert all(0.1 < s <= 1.0 for s in record["spread"]) and all(1 <= e <= 16 for e in record["effective_rank"])


def test_a_constant_projector_is_caught_by_the_default_threshold(tmp_path, monkeypatch):
    import hicl.train.loop as loop

    def constant_projectors(manifest, embed_dim):
        model = build_model(manifest, embed_dim)
        for projector in model.online.projectors:  # every image projects to the same vector: collapse
            projector.register_forward_hook(lambda module, inputs, output: output * 0 + torch.linspace(-1, 1, output.shape[1]))
        return model

    build_model = loop.build_model
    monkeypatch.setattr(loop, "build_model", constant_projectors)
    result = _run(tmp_path, health_every=1, collapse_patience=2)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: stage")]
    assert len(warnings) == 3 and "step 2" in warnings[0]  # each stage once, at its second low check
    assert "spread 0.000" in warnings[0] and "fixed_predictor_lr" in warnings[0]
    assert all(s == pytest.approx(0.0, abs=1e-5) for s in _health_records(tmp_path)[-1]["spread"])


def test_on_collapse_stop_writes_a_checkpoint_and_exits_3_with_the_reason(tmp_path):
    import json

    # spread <= 1 always, so a threshold of 1 fires at the first check: the stop path, deterministically
    result = _run(tmp_path, collapse_threshold=1.0, collapse_patience=1, on_collapse="stop")
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: stopped at step 2: stage 1 is collapsing") and "checkpoint written" in line
    meta = json.loads((tmp_path / "tiny" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["step"] == 2


def test_health_every_must_be_a_multiple_of_log_every():
    from hicl.errors import HiclError
    from hicl.manifest import manifest_from_dict

    with pytest.raises(HiclError, match=r"health_every \(15\) must be a multiple of log_every \(10\)"):
        manifest_from_dict({"name": "x", "runtime": {"health_every": 15}}, "m")
    assert manifest_from_dict({"name": "x"}, "m").runtime.health_interval == 100
