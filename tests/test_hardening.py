"""One test per defect class of the hardening issue: names that delete data, concurrent writers,
divergence saved as a checkpoint, corrupt checkpoints, the Ctrl-C hint, and the papercuts."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from hicl.cli import app
from hicl.errors import HiclError
from hicl.train import loop as loop_module
from hicl.train.health import constant_loss, first_bad_tensor
from hicl.train.loop import pretrain

runner = CliRunner()
ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def tiny(out: Path, **changes) -> dict:
    data = {
        "name": "tiny",
        "seed": 3,
        "data": {"image_size": 32, "synthetic": {"num_train": 64, "num_test": 32}},
        "backbone": {"name": "regnetx_002"},
        "method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
        "optim": {"batch_size": 32, "lr": 0.05},
        "schedule": {"epochs": 2},
        # One thread: on a shared, oversubscribed CPU, OpenMP's spinning threads make steps 100x slower.
        "runtime": {"log_every": 1, "device": "cpu", "threads": 1},
        "eval": {"epochs": 2, "batch_size": 32},
        "output": {"dir": str(out)},
    }
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return data


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def hicl_process(*args: str | Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hicl", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for(condition, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def step_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]


# ---------------------------------------------------------------------------------- 1. names, overwrite
@pytest.mark.parametrize("field, value", [("name", "."), ("name", ".."), ("output.name", ".."), ("output.name", "."),
                                          ("output.name", "../../x"), ("output.name", str(Path("/tmp").resolve()))])
def test_names_that_would_delete_data_are_refused(tmp_path, field, value):
    out = tmp_path / "runs"
    (out / "other" / "checkpoints").mkdir(parents=True)
    canaries = [out / "other" / "checkpoints" / "keep.bin", out / "canary.txt", tmp_path / "canary.txt"]
    for canary in canaries:
        canary.write_text("keep")
    manifest = write(tmp_path / "m.yaml", tiny(out, **{field: value}))
    result = runner.invoke(app, ["pretrain", str(manifest), "--overwrite", "--no-progress"])
    assert result.exit_code == 2 and field in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert all(c.read_text() == "keep" for c in canaries)


def test_overwrite_removes_only_what_hicl_wrote(tmp_path):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path, **{"schedule.epochs": 1}))
    assert runner.invoke(app, ["pretrain", str(manifest), "--no-progress"]).exit_code == 0
    run = tmp_path / "tiny"
    (run / "notes.md").write_text("mine")
    (run / "data").mkdir()
    (run / "data" / "x.bin").write_text("mine too")
    assert runner.invoke(app, ["pretrain", str(manifest), "--overwrite", "--no-progress"]).exit_code == 0
    assert (run / "notes.md").read_text() == "mine" and (run / "data" / "x.bin").read_text() == "mine too"
    assert len(step_records(run)) == 2  # the old metrics were replaced, not appended to


# ------------------------------------------------------------------------------------------ 3. the lock
def test_two_concurrent_writers(tmp_path):
    # far more epochs than the test waits for: the first writer is certainly still running (and holding
    # the lock) while the two others try, however fast the machine; it is stopped afterwards
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path, **{"schedule.epochs": 5000}))
    run = tmp_path / "tiny"
    first = hicl_process("pretrain", manifest, "--no-progress")
    try:
        wait_for(lambda: (run / "checkpoints" / "last" / "meta.json").is_file() or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        seconds = [hicl_process("pretrain", manifest, "--overwrite", "--no-progress"),
                   hicl_process("pretrain", "--resume", run, "--set", "schedule.epochs=5000", "--no-progress")]
        for second in seconds:
            _, err = second.communicate(timeout=900)
            assert second.returncode == 2, err
            assert err.strip().splitlines() == [
                f"error: {run}: in use by another hicl process (pid {first.pid}); wait for it to finish or stop it"
            ]
        assert first.poll() is None  # the lock holder was never disturbed
    finally:
        first.kill()
        first.communicate()
    complete = [line for line in (run / "metrics.jsonl").read_text().splitlines(keepends=True) if line.endswith("\n")]
    steps = [json.loads(line)["step"] for line in complete if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # each step logged once, in order


# ------------------------------------------------------------------------------------- 2. divergence
@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_huge_lr_stops_without_saving(tmp_path, method):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path, **{"method.name": method, "optim.lr": 1e6}))
    result = runner.invoke(app, ["pretrain", str(manifest), "--no-progress"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "step" in line and ("diverged" in line or "collapsed" in line), line
    assert not (tmp_path / "tiny" / "checkpoints" / "last").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 trains normally and is saved; from epoch 2 the lr is 1e6. The run stops before saving,
    and the epoch-1 checkpoint still verifies, loads and is finite."""
    from hicl.manifest import Manifest

    manifest = Manifest.model_validate(tiny(tmp_path, **{"schedule.epochs": 3}))
    real_lr_at = loop_module.lr_at
    monkeypatch.setattr(loop_module, "lr_at", lambda step, *a: real_lr_at(step, *a) if step < 2 else 1e6)
    with pytest.raises(HiclError, match=r"by step [46]: .*(running_var|weight|bias)|collapsed"):
        pretrain(manifest, show_progress=False)
    last = tmp_path / "tiny" / "checkpoints" / "last"
    assert json.loads((last / "meta.json").read_text())["epoch"] == 1
    result = runner.invoke(app, ["export", str(tmp_path / "tiny"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    for name in ("backbone", "heads", "trainer"):
        for key, tensor in load_file(last / f"{name}.safetensors").items():
            assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), key


def test_health_checks_name_the_tensor_and_see_a_constant_loss():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert first_bad_tensor(model) is None
    model[1].running_var[1] = math.inf
    assert first_bad_tensor(model) == ("1.running_var", "holds inf")
    model[1].running_var[1] = 1.0
    model[0].weight.data[0, 0] = 2e34
    assert first_bad_tensor(model)[0] == "0.weight"
    steps = [{"kind": "step", "step": i, "loss": 4.1589} for i in range(10)]
    assert constant_loss(steps) == pytest.approx(4.1589)
    assert constant_loss(steps[:9]) is None
    assert constant_loss(steps[:9] + [{"kind": "step", "step": 9, "loss": 4.2}]) is None


# -------------------------------------------------------------------------------------- 9. integrity
def test_flipped_byte_is_detected_on_every_load(tmp_path):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path, **{"schedule.epochs": 1}))
    assert runner.invoke(app, ["pretrain", str(manifest), "--no-progress"]).exit_code == 0
    run = tmp_path / "tiny"
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert set(meta["sha256"]) == {"backbone.safetensors", "heads.safetensors", "trainer.safetensors"}
    path = run / "checkpoints" / "last" / "backbone.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    for args in (["linear-eval", str(run)], ["export", str(run), "--out", str(tmp_path / "e")],
                 ["pretrain", "--resume", str(run), "--set", "schedule.epochs=2", "--no-progress"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and str(path) in result.stderr and "SHA-256" in result.stderr, result.output


# ------------------------------------------------------------------------------------- 8. Ctrl-C hint
def run_hint(line: str, cwd: Path) -> subprocess.CompletedProcess:
    command = line.split("with: ", 1)[1]
    words = shlex.split(command)
    assert words[:2] == ["hicl", "pretrain"]
    return subprocess.run([sys.executable, "-m", "hicl", *words[1:], "--no-progress"], env=ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_ctrl_c_hint_runs_as_printed(tmp_path):
    manifest = write(tmp_path / "m.yaml", tiny("runs"))
    overrides = ["--set", "schedule.epochs=30", "--set", "output.name=interrupted"]
    process = hicl_process("pretrain", manifest, *overrides, "--no-progress", cwd=tmp_path)
    run = tmp_path / "runs" / "interrupted"
    wait_for(lambda: (run / "checkpoints" / "last" / "meta.json").is_file() or process.poll() is not None)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=900)
    assert process.returncode == 130, err
    hint = err.strip().splitlines()[-1]
    assert hint.startswith("stopped by SIGINT at step ")
    assert hint.endswith(", checkpoint written; continue with: hicl pretrain --resume runs/interrupted")
    resumed = run_hint(hint, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 30
    assert [r["step"] for r in step_records(run)] == list(range(1, 61))


def test_ctrl_c_before_the_first_checkpoint_hints_a_restart(tmp_path, monkeypatch):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path))
    real = loop_module.pretrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "pretrain", interrupted)
    result = runner.invoke(app, ["pretrain", str(manifest), "--set", "seed=4", "--set", "optim.lr=0.1"])
    monkeypatch.setattr(loop_module, "pretrain", real)
    assert result.exit_code == 130
    hint = result.stderr.strip().splitlines()[-1]
    assert hint.endswith(f"hicl pretrain {manifest} --set seed=4 --set optim.lr=0.1 --overwrite"), hint
    words = shlex.split(hint.split("with: ", 1)[1])
    again = runner.invoke(app, [*words[1:], "--no-progress"])
    assert again.exit_code == 0, again.output
    assert yaml.safe_load((tmp_path / "tiny" / "manifest.yaml").read_text())["seed"] == 4


# ------------------------------------------------------------------------------------- 11. papercuts
def test_resume_papercuts(tmp_path):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path))
    result = runner.invoke(app, ["pretrain", str(manifest)])  # progress on: not a terminal -> plain lines
    assert result.exit_code == 0, result.output
    assert "tiny: step 4/4" in result.stderr and "img/s on average" in result.stderr
    run = tmp_path / "tiny"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all("lr" in r and len(r["stage_losses"]) == 1 for r in epochs)
    recorded = (run / "manifest.yaml").read_bytes()
    for args, expected in [
        (["pretrain", str(manifest), "--resume", "--overwrite"], "exclude"),
        (["pretrain", "--resume", str(run), "--set", "schedule.epochs=1"], "reached epoch 2"),
        (["linear-eval", str(tmp_path / "nonexistent")], "no such run directory"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.stderr, result.output
    assert (run / "manifest.yaml").read_bytes() == recorded
    # Resuming a finished run whose metrics are gone does nothing, without failing on the plot.
    (run / "metrics.jsonl").rename(tmp_path / "metrics.jsonl")
    result = runner.invoke(app, ["pretrain", "--resume", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    (tmp_path / "metrics.jsonl").rename(run / "metrics.jsonl")
    # A run directory moved elsewhere resumes from where it now is.
    moved = tmp_path / "moved"
    run.rename(moved)
    result = runner.invoke(app, ["pretrain", "--resume", str(moved), "--set", "schedule.epochs=3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in step_records(moved)] == [1, 2, 3, 4, 5, 6]


def test_existing_run_is_refused_before_data_generation(tmp_path, monkeypatch):
    manifest = write(tmp_path / "m.yaml", tiny(tmp_path, **{"schedule.epochs": 1}))
    assert runner.invoke(app, ["pretrain", str(manifest), "--no-progress"]).exit_code == 0

    def no_data(*args, **kwargs):
        raise AssertionError("data generated before the run directory was checked")

    monkeypatch.setattr(loop_module, "TrainData", no_data)
    result = runner.invoke(app, ["pretrain", str(manifest), "--no-progress"])
    assert result.exit_code == 2 and "run directory exists" in result.stderr
