"""End to end on tiny synthetic data: reproducibility, resume, safe checkpoints, linear-eval, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hicl.cli import app
from hicl.errors import HiclError
from hicl.evaluate.features import pretrained_backbone
from hicl.manifest import Manifest
from hicl.methods import DEFAULT_METHOD
from hicl.train import checkpoint as checkpoint_module
from hicl.train import loop as loop_module
from hicl.train.loop import pretrain
from method_sections import method_section, target_methods

runner = CliRunner()


def tiny_manifest(out: Path, name: str = "tiny", **sections) -> Manifest:
    base = {
        "name": name,
        "seed": 3,
        "data": {"image_size": 32, "synthetic": {"num_train": 96, "num_test": 48}},
        "backbone": {"name": "regnetx_002"},
        "method": {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 16},
        "optim": {"batch_size": 32, "lr": 0.05},
        "schedule": {"epochs": 2},
        "runtime": {"log_every": 1, "device": "cpu"},
        "eval": {"epochs": 3, "batch_size": 32},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    # the method's own keys only: the tiny widths above are a superset shared by every method
    method = dict(base["method"])
    base["method"] = method_section(method.pop("name", DEFAULT_METHOD), **method)
    return Manifest.model_validate(base)


def checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    last = run_dir / "checkpoints" / "last"
    return {
        f"{f}:{k}": v
        for f in ("backbone", "heads", "trainer")
        for k, v in load_file(last / f"{f}.safetensors").items()
    }


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "step"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_manifest_same_seed_same_numbers(tmp_path):
    first = pretrain(tiny_manifest(tmp_path / "a"), show_progress=False).run_dir
    second = pretrain(tiny_manifest(tmp_path / "b"), show_progress=False).run_dir
    assert step_losses(first) == step_losses(second) and len(step_losses(first)) == 6
    assert_same_tensors(checkpoint_tensors(first), checkpoint_tensors(second))
    third = pretrain(tiny_manifest(tmp_path / "c", seed=4), show_progress=False).run_dir
    assert step_losses(third) != step_losses(first)


def test_run_directory_layout(tmp_path):
    run_dir = pretrain(tiny_manifest(tmp_path), show_progress=False).run_dir
    assert Manifest.model_validate(__import__("yaml").safe_load((run_dir / "manifest.yaml").read_text())) == tiny_manifest(tmp_path)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 3 and env["torch"] == torch.__version__ and len(env["data"]["fingerprint"]["pixels_sha256"]) == 16
    assert sorted(p.name for p in (run_dir / "checkpoints" / "last").iterdir()) == sorted(checkpoint_module.FILES)


@pytest.mark.parametrize("method", target_methods())
def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch, method):
    """A run stopped after epoch 1 and resumed ends with the same tensors as an uninterrupted run."""
    extra = {"method": {"name": method, "queue_size": 64}, "hierarchy": {"mode": "add_one", "adapter": "pool_linear"}}
    straight = pretrain(tiny_manifest(tmp_path / "straight", **extra), show_progress=False).run_dir

    real_save = loop_module.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_crash)
    crashed = tiny_manifest(tmp_path / "crashed", **extra)
    with pytest.raises(KeyboardInterrupt):
        pretrain(crashed, show_progress=False)
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    resumed = pretrain(crashed, resume=True, show_progress=False).run_dir

    assert step_losses(resumed) == step_losses(straight)
    assert_same_tensors(checkpoint_tensors(resumed), checkpoint_tensors(straight))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    manifest = tiny_manifest(tmp_path)
    run_dir = pretrain(manifest.model_copy(update={"schedule": manifest.schedule.model_copy(update={"epochs": 1})}),
                       show_progress=False).run_dir
    good = checkpoint_tensors(run_dir)
    real_save_file = checkpoint_module.save_file

    def fail_on_heads(tensors, path, **kwargs):
        if Path(path).name == "heads.safetensors":
            raise OSError("disk full")
        real_save_file(tensors, path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", fail_on_heads)
    with pytest.raises(OSError):
        pretrain(manifest, resume=True, show_progress=False)
    assert_same_tensors(checkpoint_tensors(run_dir), good)


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    manifest = tiny_manifest(tmp_path, schedule={"epochs": 1})
    pretrain(manifest, show_progress=False)
    with pytest.raises(HiclError, match="--resume"):
        pretrain(manifest, show_progress=False)
    changed = tiny_manifest(tmp_path, schedule={"epochs": 1}, optim={"lr": 0.1})
    with pytest.raises(HiclError, match="different manifest"):
        pretrain(changed, resume=True, show_progress=False)


def test_manifest_errors_found_at_start_leave_no_run_directory(tmp_path):
    with pytest.raises(HiclError, match="optim.batch_size"):
        pretrain(tiny_manifest(tmp_path, optim={"batch_size": 512}), show_progress=False)
    with pytest.raises(HiclError, match="hierarchy.stages"):
        pretrain(tiny_manifest(tmp_path, hierarchy={"mode": "add_one", "stages": ["s1", "s2", "s3", "layer9"]}),
                 show_progress=False)
    assert not (tmp_path / "tiny").exists()


def test_linear_eval_and_timm_export_round_trip(tmp_path):
    manifest = tiny_manifest(tmp_path, schedule={"epochs": 1})
    run_dir = pretrain(manifest, show_progress=False).run_dir

    result = runner.invoke(app, ["linear-eval", str(run_dir)])
    assert result.exit_code == 0, result.output
    scores = json.loads((run_dir / "results" / "linear_eval.json").read_text())
    for head, row in scores["heads"].items():
        for column in ("pretrained", "random_init"):
            assert 0.0 <= row[column]["top1"] <= 1.0, head

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run_dir), "--format", "timm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = timm.create_model(
        "regnetx_002", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")), num_classes=0
    ).eval()
    mine, _ = pretrained_backbone(manifest, run_dir / "checkpoints" / "last")
    torch.manual_seed(0)
    fresh = timm.create_model("regnetx_002", num_classes=0).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported(x), mine.eval()(x))
        assert not torch.allclose(exported(x), fresh(x))  # the weights were really loaded
    assert json.loads((out / "export.json").read_text())["architecture"] == "regnetx_002"


def test_export_unknown_format_and_missing_run(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "none"), "--format", "caffe", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--format" in result.output
    result = runner.invoke(app, ["linear-eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a hicl run directory" in result.output


def test_loss_plot_shows_every_stage_from_the_metrics(tmp_path):
    from hicl.plots import training_figure

    run_dir = pretrain(tiny_manifest(tmp_path, hierarchy={"mode": "add_one", "adapter": "pool_linear"}),
                       show_progress=False).run_dir
    assert (run_dir / "results" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = training_figure(records).axes[0].get_lines()
    steps = [r for r in records if r["kind"] == "step"]
    assert [line.get_label() for line in lines] == ["total (weighted)", "stage 1", "stage 2", "stage 3", "stage 4"]
    assert list(lines[0].get_ydata()) == [r["loss"] for r in steps]
    assert list(lines[3].get_ydata()) == [r["stage_losses"][2] for r in steps]
