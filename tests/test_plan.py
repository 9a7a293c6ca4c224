"""`hicl plan`: the table from the run's own setup, nothing written, and a batch that fits a memory cap."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.train.plan import human_bytes, parse_bytes

TINY = {
    "name": "tiny",
    "data": {"image_size": 32, "synthetic": {"num_train": 256, "num_test": 32}},
    "backbone": {"name": "resnet18"},
    "method": {"name": "simsiam", "proj_hidden_dim": 64, "proj_dim": 64, "pred_hidden_dim": 16},
    "optim": {"batch_size": 16},
    "schedule": {"epochs": 3},
    "runtime": {"device": "cpu", "threads": 1},
}


def _manifest(tmp_path: Path, image_size: int = 32) -> Path:
    path = tmp_path / "m.yaml"
    data = {**TINY["data"], "image_size": image_size}
    path.write_text(yaml.safe_dump({**TINY, "data": data, "output": {"dir": str(tmp_path / "runs")}}))
    return path


def test_plan_prints_every_figure_and_writes_no_run(tmp_path):
    result = CliRunner().invoke(app, ["plan", str(_manifest(tmp_path)), "--steps", "2"])
    assert result.exit_code == 0, result.output
    for row in ("images/s end to end", "images/s model step", "epoch", "whole schedule", "peak memory",
                "checkpoint", "linear-eval cache"):
        assert row in result.output, row
    assert "(16 steps)" in result.output and "(3 epochs)" in result.output  # 256 images / 16
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "count"), [("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", int(1.5 * 2**30)),
                                             ("800M", 800 * 2**20), ("1000", 1000)])
def test_sizes_parse_in_binary_units(text, count):
    assert parse_bytes(text) == count
    assert human_bytes(2 * 2**30) == "2.0 GiB"


def _peak_rss_of(code: str) -> int:
    """Peak RSS in bytes of a fresh interpreter running `code`."""
    script = code + "\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def test_fit_batch_picks_a_batch_whose_real_run_stays_under_the_cap(tmp_path):
    path = _manifest(tmp_path, image_size=64)
    baseline = _peak_rss_of("import hicl.train.loop")  # torch, timm and hicl loaded, nothing built
    cap = baseline + 450 * 2**20
    planned = subprocess.run([sys.executable, "-m", "hicl", "plan", str(path), "--fit-batch", "--max-memory",
                              f"{cap // 2**20}MiB", "--steps", "1"], capture_output=True, text=True)
    assert planned.returncode == 0, planned.stderr
    batch = int(re.search(r"--set optim.batch_size=(\d+)", planned.stderr).group(1))
    units = {"MiB": 2**20, "GiB": 2**30}
    peaks = {int(b): float(value) * units[unit]
             for b, value, unit in re.findall(r"batch (\d+): peak ([\d.]+) (MiB|GiB)", planned.stderr)}
    assert all(peak <= 0.9 * cap for b, peak in peaks.items() if b <= batch)
    assert batch * 2 > 256 or peaks[batch * 2] > 0.9 * cap  # the next batch did not fit (or there is no more data)
    real = _peak_rss_of(
        "from hicl.manifest import load_manifest\nfrom hicl.train.loop import pretrain\n"
        f"pretrain(load_manifest({str(path)!r}, ['optim.batch_size={batch}', 'schedule.epochs=1']), show_progress=False)"
    )
    assert real < cap, (human_bytes(real), human_bytes(cap), batch)
