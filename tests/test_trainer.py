"""The trainer's callbacks, the loggers that read back what metrics.jsonl holds, the checkpoint read side,
and what --resume says."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.manifest import Manifest
from hicl.train import loop as loop_module
from hicl.train.callbacks import Callback
from hicl.train.loop import pretrain

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def tiny(out: Path, **runtime) -> dict:
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"image_size": 32, "synthetic": {"num_train": 64, "num_test": 32}},
        "backbone": {"name": "regnetx_002"},
        "method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
        "optim": {"batch_size": 32, "lr": 0.05},
        "schedule": {"epochs": 2},
        "runtime": {"log_every": 1, "device": "cpu", "threads": 1, **runtime},
        "eval": {"epochs": 2, "batch_size": 32, "random_init_baseline": False},
        "output": {"dir": str(out)},
    }


def manifest_file(tmp_path: Path, **runtime) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, **runtime)))
    return path


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class Recorder(Callback):
    """Writes down every hook call."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_run_start(self, run):
        self.calls.append(("run_start", run.step))

    def on_step_end(self, run, record):
        self.calls.append(("step_end", run.epoch, run.epoch_step, run.step, record))

    def on_epoch_end(self, run, records):
        self.calls.append(("epoch_end", run.epoch, run.step, [dict(r) for r in records]))

    def on_run_end(self, run, error):
        self.calls.append(("run_end", error))


def test_callbacks_see_every_hook_in_order_with_the_records_of_metrics_jsonl(tmp_path):
    recorder = Recorder()
    manifest = Manifest.model_validate(tiny(tmp_path, log_every=2))
    run = pretrain(manifest, show_progress=False, callbacks=[recorder]).run_dir
    names = [call[0] for call in recorder.calls]
    assert names == ["run_start", "step_end", "step_end", "epoch_end", "step_end", "step_end", "epoch_end", "run_end"]
    steps = [c for c in recorder.calls if c[0] == "step_end"]
    assert [(c[1], c[2], c[3]) for c in steps] == [(0, 1, 1), (0, 2, 2), (1, 1, 3), (1, 2, 4)]
    assert [c[4] for c in steps if c[4] is not None] == records(run, "step")  # logging steps only: 2 and 4
    assert [c[3][0] for c in recorder.calls if c[0] == "epoch_end"] == records(run, "epoch")
    assert recorder.calls[-1] == ("run_end", None)
    images = manifest.optim.batch_size * 2  # two steps an epoch
    for epoch in records(run, "epoch"):  # an epoch's seconds and images/s come from one clock
        assert epoch["seconds"] > 0 and epoch["images_per_s"] * epoch["seconds"] == pytest.approx(images, rel=1e-6)


class StopAtStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run, record):
        if run.step == self.step:
            run.stop_signal = 2


def test_a_callback_stops_the_run_after_a_checkpoint(tmp_path):
    from hicl.train.signals import Stopped

    manifest = Manifest.model_validate(tiny(tmp_path))
    with pytest.raises(Stopped, match="at step 3"):
        pretrain(manifest, show_progress=False, callbacks=[StopAtStep(3)])
    meta = json.loads((tmp_path / "tiny" / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["epoch"], meta["step"], meta["epoch_step"]) == (1, 3, 1)


def test_no_function_of_the_loop_is_longer_than_60_lines():
    for module in ("hicl/train/loop.py", "hicl/train/callbacks.py", "hicl/train/loggers.py", "hicl/checkpoint.py"):
        tree = ast.parse((ROOT / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{module}: {node.name}"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_runs_evaluate_and_export_read_checkpoints_without_the_training_package():
    readers = [ROOT / "hicl/runs.py", *(ROOT / "hicl/evaluate").glob("*.py"), *(ROOT / "hicl/export").glob("*.py")]
    for path in readers:
        imported = imported_modules(path)
        assert "hicl.train.checkpoint" not in imported, path
    assert not any(name.startswith("hicl.train") for name in imported_modules(ROOT / "hicl/runs.py"))


class CountingSha256:
    """hashlib.sha256 that remembers every hash object it made, to count which hashed a given file."""

    made: list = []

    def __init__(self, data: bytes = b"", **kwargs):
        self.inner = REAL_SHA256(data, **kwargs)
        CountingSha256.made.append(self.inner)

    def update(self, data) -> None:
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()

    def digest(self) -> bytes:
        return self.inner.digest()


REAL_SHA256 = hashlib.sha256


def hashes_of(path: Path) -> int:
    expected = REAL_SHA256(path.read_bytes()).hexdigest()
    return sum(h.hexdigest() == expected for h in CountingSha256.made)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    result = runner.invoke(app, ["pretrain", str(manifest_file(tmp, **{})), "--no-progress",
                                 "--set", "schedule.epochs=1"])
    assert result.exit_code == 0, result.output
    return tmp / "tiny"


def test_an_evaluation_and_an_export_read_and_hash_the_backbone_once(finished_run, tmp_path, monkeypatch):
    from hicl.evaluate.linear import linear_eval
    from hicl.export.base import run_export
    from hicl.runs import open_run

    backbone = finished_run / "checkpoints" / "last" / "backbone.safetensors"
    monkeypatch.setattr(hashlib, "sha256", CountingSha256)
    CountingSha256.made = []
    run, manifest = open_run(finished_run, ["eval.epochs=1"])
    linear_eval(manifest, run)
    assert hashes_of(backbone) == 1
    CountingSha256.made = []
    run_export(finished_run, "timm", tmp_path / "export")
    assert hashes_of(backbone) == 1


def test_resume_of_a_finished_run_says_there_is_nothing_left_with_its_figures(finished_run):
    metrics = (finished_run / "metrics.jsonl").read_text()
    loss = records(finished_run, "step")[-1]["loss"]
    result = runner.invoke(app, ["pretrain", "--resume", str(finished_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "nothing left to do" in result.output and f"2 steps in" in result.output
    assert f"final loss {loss:.4f}" in result.output and "nan" not in result.output
    assert (finished_run / "metrics.jsonl").read_text() == metrics


def test_resume_of_a_finished_run_without_metrics_leaves_none(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(finished_run, copy)
    (copy / "metrics.jsonl").unlink()
    result = runner.invoke(app, ["pretrain", "--resume", str(copy), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "nothing left to do" in result.output and "final loss" in result.output
    assert not (copy / "metrics.jsonl").exists()


def test_a_resumed_run_says_where_it_resumed_and_counts_the_whole_run(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(finished_run, copy)
    before = json.loads((copy / "checkpoints" / "last" / "meta.json").read_text()).get("wall_s", 0)
    result = runner.invoke(app, ["pretrain", "--resume", str(copy), "--no-progress", "--set", "schedule.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "resumed at step 2 of 4" in result.output
    assert "pretrained 4 steps in" in result.output and "whole run, resumed at step 2" in result.output
    after = json.loads((copy / "checkpoints" / "last" / "meta.json").read_text())["wall_s"]
    assert after > before > 0  # the whole run's training time goes on from the first session's


def test_training_plot_of_a_short_run_draws_its_few_records():
    from hicl.plots import training_figure

    records = [  # a 2-step run logging every 10 steps: one step record, two epoch records
        {"kind": "epoch", "epoch": 0, "step": 1, "lr": 0.1, "loss": 3.0, "stage_losses": [3.0], "images_per_s": 9.0},
        {"kind": "step", "epoch": 1, "step": 2, "lr": 0.1, "loss": 2.5, "stage_losses": [2.5], "images_per_s": 9.0},
        {"kind": "epoch", "epoch": 1, "step": 2, "lr": 0.1, "loss": 2.6, "stage_losses": [2.6], "images_per_s": 9.0},
    ]
    figure = training_figure(records)
    loss_panel, lr_panel = figure.axes[:2]
    for line in [*loss_panel.lines, *lr_panel.lines]:  # a line through fewer than 2 points draws nothing
        assert len(line.get_xdata()) >= 2 or line.get_marker() not in (None, "None", "", " "), line.get_label()
    (epoch_points,) = loss_panel.collections
    assert epoch_points.get_offsets().tolist() == [[1, 3.0], [2, 2.6]]


def test_a_logger_that_is_not_installed_is_one_line_before_training(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = runner.invoke(app, ["pretrain", str(manifest_file(tmp_path, loggers=["wandb"])), "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: runtime.loggers: wandb is not installed; pip install 'hicl[wandb]'"
    assert not (tmp_path / "tiny").exists()


def interrupt_at_step(monkeypatch, number: int) -> None:
    """A KeyboardInterrupt as step `number` (1-based) begins, after the steps before it were logged."""
    real, calls = loop_module.set_lr, []

    def set_lr(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "set_lr", set_lr)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    """3 epochs of 2 steps, checkpointed every 2 epochs, interrupted at step 6 (step 5 was logged past
    the checkpoint at step 4) and resumed; TensorBoard and MLflow log it."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("logged")
    data = tiny(tmp, loggers=["tensorboard", "mlflow"], mlflow_uri=(tmp / "mlruns").as_uri(), checkpoint_every=2)
    manifest = Manifest.model_validate({**data, "schedule": {"epochs": 3}})
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_at_step(monkeypatch, 6)
        with pytest.raises(KeyboardInterrupt):
            pretrain(manifest, show_progress=False)
    assert json.loads((tmp / "tiny" / "checkpoints" / "last" / "meta.json").read_text())["step"] == 4
    pretrain(manifest, resume=True, show_progress=False)
    return tmp / "tiny"


def test_tensorboard_events_hold_the_losses_of_metrics_jsonl_in_one_run(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = logged_run / "tensorboard"
    assert not [p for p in folder.iterdir() if p.is_dir()]  # one run: the resumed session wrote beside the first
    events = EventAccumulator(str(folder))
    events.Reload()
    for tag, kind in (("loss/total", "step"), ("epoch_loss/total", "epoch"), ("loss/stage_1", "step")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(r["step"], r["loss"] if tag != "loss/stage_1" else r["stage_losses"][0]) for r in records(logged_run, kind)]
        assert [s for s, _ in logged] == [s for s, _ in expected], tag  # step 5 of the first session purged
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), tag  # float32
    assert "training" in events.Tags()["images"]


def test_mlflow_store_holds_the_params_and_the_metric_history_in_one_run(logged_run):
    from mlflow.tracking import MlflowClient

    run_id = json.loads((logged_run / "loggers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(logged_run.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("hicl")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["optim.lr"] == "0.05"
    assert run.data.params["method.name"] == "simclr"
    history = client.get_metric_history(run_id, "loss/total")
    expected = {(r["step"], r["loss"]) for r in records(logged_run, "step")}
    assert {m.step for m in history} == {s for s, _ in expected}
    for step, loss in expected:  # a step replayed after the resume was logged again, with the same loss
        assert any(m.step == step and m.value == pytest.approx(loss, rel=1e-9) for m in history), step
    assert [f.path for f in client.list_artifacts(run_id)] == ["training.png"]


def test_wandb_offline_writes_its_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    manifest = Manifest.model_validate({**tiny(tmp_path, loggers=["wandb"]), "schedule": {"epochs": 1}})
    run = pretrain(manifest, show_progress=False).run_dir
    run_id = json.loads((run / "loggers.json").read_text())["wandb"]
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    resumed = manifest.model_copy(update={"schedule": manifest.schedule.model_copy(update={"epochs": 2})})
    pretrain(resumed, resume=True, show_progress=False)
    assert json.loads((run / "loggers.json").read_text())["wandb"] == run_id  # `wandb sync` joins them by id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
