"""`hicl pretrain` and `hicl linear-eval` end to end on real files: an image folder and Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.data.arrays import DEBIAN_FASHION_MNIST
from test_data import write_folder

runner = CliRunner()


def manifest(tmp_path: Path, data: dict, **extra) -> Path:
    body = {
        "name": "real",
        "data": data,
        "backbone": {"name": "regnetx_002"},
        "augment": {"output_size": 32},
        "method": {"name": "simsiam", "proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 16},
        "optim": {"batch_size": 32, "lr": 0.05},
        "schedule": {"epochs": 1},
        "runtime": {"device": "cpu", "log_every": 2},
        "eval": {"epochs": 10, "batch_size": 32, "random_init_baseline": False},
        "output": {"dir": str(tmp_path / "runs")},
        **extra,
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def pretrain_and_eval(path: Path) -> dict:
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = Path(yaml.safe_load(path.read_text())["output"]["dir"]) / "real"
    result = runner.invoke(app, ["linear-eval", str(run_dir)])
    assert result.exit_code == 0, result.output
    return json.loads((run_dir / "results" / "linear_eval.json").read_text())


def test_pretrain_and_linear_eval_on_an_image_folder(tmp_path):
    write_folder(tmp_path / "images", {"train": 64, "val": 20})  # 192 + 60 small JPEGs of 3 classes
    (tmp_path / "images" / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    path = manifest(tmp_path, {"source": "folder", "root": str(tmp_path / "images"), "image_size": 40, "workers": 2})
    scores = pretrain_and_eval(path)["heads"]["class"]
    assert scores["classes"] == 3 and scores["pretrained"]["top1"] > 0.6  # chance is 1/3
    env = json.loads((tmp_path / "runs" / "real" / "env.json").read_text())
    assert env["data"]["skipped_images"] == 1 and env["data"]["fingerprint"]["files"] == 193


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_pretrain_and_linear_eval_on_fashion_mnist(tmp_path):
    data = {"source": "fashion_mnist", "image_size": 32, "max_images": 640, "workers": 0}
    scores = pretrain_and_eval(manifest(tmp_path, data))["heads"]["class"]
    assert scores["classes"] == 10 and scores["pretrained"]["top1"] > 0.3  # chance is 0.1
