"""`hicl pretrain` under torchrun: 2 CPU processes (gloo), the real launcher, the real CLI.

One uninterrupted job, and one stopped by SIGTERM to torchrun (which forwards it to both ranks) and then
resumed: the resumed job must end with exactly the tensors of the uninterrupted one, which holds only
if every rank restored its own data position and augmentation generator. The equality of a 2-rank step
with one process on the global batch is tested in test_distributed.py.
"""

from __future__ import annotations

import json
import os
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

STEPS = 32  # 4 epochs of 8 global batches: long enough to be stopped in the middle

MANIFEST = {
    "name": "ddp",
    "seed": 3,
    "data": {"source": "synthetic", "image_size": 16, "synthetic": {"num_train": 64, "num_test": 32}},
    "backbone": {"name": "resnet18"},
    # SimCLR: its negatives are gathered across ranks, so the ranks' losses are coupled
    "method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
    "hierarchy": {"mode": "add_one", "groups": [["crop", "color_jitter"], ["flip"]],
                  "embeddings": {"ops": ["color_jitter"]}},
    "optim": {"batch_size": 8, "lr": 0.1},
    "schedule": {"epochs": 4, "warmup_epochs": 1},
    "runtime": {"log_every": 1, "threads": 1},
}


def torchrun(cwd: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "hicl", "pretrain", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def steps_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"kind": "step"' in line]


def epoch_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if record["kind"] == "epoch"]


def tensors(run: Path) -> dict[str, torch.Tensor]:
    last = run / "checkpoints" / "last"
    return load_file(last / "backbone.safetensors") | load_file(last / "heads.safetensors")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    """runs/full (uninterrupted) and runs/stopped (SIGTERM at step >= 3, checkpoint left as written)."""
    root = tmp_path_factory.mktemp("torchrun")
    (root / "m.yaml").write_text(yaml.safe_dump(MANIFEST))
    rc, output = finish(torchrun(root, "m.yaml", "--set", "output.name=full"))
    assert rc == 0, output
    stopped = torchrun(root, "m.yaml", "--set", "output.name=stopped")
    deadline = time.monotonic() + 240
    while max(steps_logged(root / "runs" / "stopped"), default=0) < 3 and stopped.poll() is None:
        assert time.monotonic() < deadline, "the job never logged step 3"
        time.sleep(0.02)
    stopped.send_signal(signal.SIGTERM)
    rc, output = finish(stopped)
    (root / "stopped.log").write_text(output)
    return root


def test_rank_zero_alone_writes_one_record_of_the_job(jobs):
    run = jobs / "runs" / "full"
    assert steps_logged(run) == list(range(1, STEPS + 1))  # one line per step, not one per rank
    assert json.loads((run / "env.json").read_text())["processes"] == 2
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (jobs / "runs").iterdir()) == ["full", "stopped"]


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_with_a_checkpoint(jobs):
    output = (jobs / "stopped.log").read_text()
    meta = json.loads((jobs / "runs" / "stopped" / "checkpoints" / "last" / "meta.json").read_text())
    assert 3 <= meta["step"] < STEPS, meta
    assert output.count("checkpoint written; continue with: torchrun") == 1  # printed by rank 0 only
    assert max(steps_logged(jobs / "runs" / "stopped")) == meta["step"]


def test_resuming_with_another_process_count_is_one_line(jobs):
    result = CliRunner().invoke(app, ["pretrain", "--resume", str(jobs / "runs" / "stopped")])
    assert result.exit_code == 2 and "2 process(es)" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resumed_job_ends_with_the_uninterrupted_tensors(jobs):
    rc, output = finish(torchrun(jobs, "--resume", str(jobs / "runs" / "stopped")))
    assert rc == 0, output
    full, resumed = tensors(jobs / "runs" / "full"), tensors(jobs / "runs" / "stopped")
    assert full.keys() == resumed.keys() and len(full) > 100
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
    assert steps_logged(jobs / "runs" / "stopped") == list(range(1, STEPS + 1))
    # the epoch records, the interrupted epoch's included, average the losses over both ranks alike
    full_epochs, resumed_epochs = (epoch_losses(jobs / "runs" / name) for name in ("full", "stopped"))
    assert len(full_epochs) == 4 and resumed_epochs == pytest.approx(full_epochs, rel=1e-9)
