"""SIGINT/SIGTERM and step-count checkpoints: a run stopped mid-epoch resumes to the same final tensors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.train import loop as loop_module
from test_pretrain import assert_same_tensors, checkpoint_tensors, step_losses, tiny_manifest

runner = CliRunner()


def manifest_file(tmp_path: Path, name: str, **runtime) -> Path:
    # 96 images at batch 32: 3 steps per epoch, 2 epochs
    manifest = tiny_manifest(tmp_path / "runs", name=name, runtime={"log_every": 1, "device": "cpu", **runtime})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest.model_dump(mode="json")))
    return path


def at_step(monkeypatch, number: int, action) -> None:
    """Run `action` as step `number` (1-based) begins; the step itself still completes."""
    real, calls = loop_module.set_lr, []

    def set_lr(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "set_lr", set_lr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    result = runner.invoke(app, ["pretrain", str(manifest_file(tmp, "run")), "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "run"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_writes_a_checkpoint_and_resume_is_identical(tmp_path, monkeypatch, uninterrupted,
                                                                      signum, code):
    path = manifest_file(tmp_path, "run")
    at_step(monkeypatch, 5, lambda: os.kill(os.getpid(), signum))  # step 2 of epoch 2
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == code, result.output
    run = tmp_path / "runs" / "run"
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["epoch"], meta["step"], meta["epoch_step"]) == (1, 5, 2)
    assert f"at step 5, checkpoint written; continue with: hicl pretrain --resume {run}" in result.output
    monkeypatch.undo()
    result = runner.invoke(app, ["pretrain", "--resume", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert_same_tensors(checkpoint_tensors(uninterrupted), checkpoint_tensors(run))
    assert step_losses(run) == step_losses(uninterrupted)
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    whole = [r for r in map(json.loads, (uninterrupted / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "epoch"]
    assert [r["loss"] for r in epochs] == [r["loss"] for r in whole]


def test_step_count_checkpoint_survives_a_crash(tmp_path, monkeypatch, uninterrupted):
    path = manifest_file(tmp_path, "run", checkpoint_every_steps=2)

    def crash():
        raise RuntimeError("the machine went away")

    at_step(monkeypatch, 6, crash)  # the last checkpoint before it: step 4 (mid-epoch 2)
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == 1 and "the machine went away" in result.output  # the CLI's boundary for bugs
    run = tmp_path / "runs" / "run"
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["step"], meta["epoch_step"]) == (4, 1)
    monkeypatch.undo()
    result = runner.invoke(app, ["pretrain", "--resume", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert_same_tensors(checkpoint_tensors(uninterrupted), checkpoint_tensors(run))


def test_a_second_signal_stops_at_once_keeping_the_previous_checkpoint(tmp_path, monkeypatch):
    path = manifest_file(tmp_path, "run")

    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    at_step(monkeypatch, 5, twice)
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == 130, result.output
    meta = json.loads((tmp_path / "runs" / "run" / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["epoch"], meta["step"]) == (1, 3) and "epoch_step" not in meta  # the epoch-1 checkpoint


def test_knn_monitor_is_logged_plotted_and_changes_no_training_number(tmp_path, uninterrupted):
    path = manifest_file(tmp_path, "run", knn_every=1)
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if r["kind"] == "knn"]
    assert [r["step"] for r in knn] == [3, 6] and all(0.0 <= r["top1"] <= 1.0 for r in knn)
    assert "kNN top-1" in result.output
    # the monitor reads the backbone in eval mode and draws no random numbers: training is unchanged
    assert_same_tensors(checkpoint_tensors(uninterrupted), checkpoint_tensors(run))
    (run / "results" / "training.png").unlink()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0 and (run / "results" / "training.png").read_bytes()[:4] == b"\x89PNG"
