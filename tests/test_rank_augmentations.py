"""`hicl rank-augmentations` on tiny data whose label is the hue: hue jitter must rank as harmful.

Every image is a grey square with one saturated patch whose hue is the class (4 classes). A pilot
trained with hue jitter over the whole colour circle learns to ignore hue, so its kNN top-1 on the
class falls towards chance; without that op it stays far above. Crop does not touch the hue, so it
must rank above the jitter, stay in the written manifest, and the jitter must be dropped from it.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import encode_png
from typer.testing import CliRunner

from hicl.augment.op import canonical
from hicl.cli import app
from hicl.manifest import load_manifest
from hicl.ranking.stats import interval, spearman, t975, tie_groups, verdict

runner = CliRunner()
HUES = (0.0, 0.25, 0.5, 0.75)
SIDE = 16


def write_hue_folder(root: Path, per_class: dict[str, int]) -> None:
    """ImageFolder tree: class k is a patch of hue HUES[k] (+-0.04) at a random place on a random grey."""
    generator = torch.Generator().manual_seed(0)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    for split, count in per_class.items():
        for k, hue in enumerate(HUES):
            folder = root / split / f"hue{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = torch.full((3, SIDE, SIDE), int(uniform(60, 190)), dtype=torch.uint8)
                side = int(uniform(7, 12))
                x, y = int(uniform(0, SIDE - side + 1)), int(uniform(0, SIDE - side + 1))
                rgb = colorsys.hsv_to_rgb((hue + uniform(-0.04, 0.04)) % 1, 0.9, uniform(0.6, 1.0))
                image[:, y : y + side, x : x + side] = torch.tensor([int(255 * c) for c in rgb]).view(3, 1, 1)
                (folder / f"{i:03d}.png").write_bytes(bytes(encode_png(image).numpy()))


def hue_manifest(tmp_path: Path) -> Path:
    write_hue_folder(tmp_path / "hues", {"train": 64, "val": 24})
    manifest = {
        "name": "hue_rank",
        "data": {"source": "folder", "root": str(tmp_path / "hues"), "image_size": SIDE},
        "backbone": {"name": "regnetx_002"},
        "method": {"name": "simclr", "proj_hidden_dim": 64, "proj_dim": 32, "temperature": 0.2},
        "hierarchy": {"mode": "off", "embeddings": {"ops": ["color_jitter"]}},
        "augment": {
            "ops": ["crop", "color_jitter"],
            "crop": {"scale": [0.5, 1.0]},
            # destructive for this label: any hue becomes any other
            "color_jitter": {"p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 1.0, "hue": 0.5},
        },
        "optim": {"lr": 4.0, "batch_size": 32},
        "schedule": {"epochs": 8},
        "runtime": {"device": "cpu", "threads": 1, "log_every": 100},
        "eval": {"knn_k": 10},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "hue.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.usefixtures("one_thread")
def test_hue_jitter_ranks_harmful_and_is_dropped(tmp_path):
    manifest = hue_manifest(tmp_path)
    written = tmp_path / "ranked.yaml"
    args = ["rank-augmentations", str(manifest), "--seeds", "0,1", "--write", str(written)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ranking = json.loads((tmp_path / "runs" / "rank_hue_rank" / "ranking.json").read_text())
    order = [row["op"] for row in ranking["ranking"]]
    jitter = ranking["ranking"][order.index("color_jitter")]
    assert jitter["verdict"] == "harmful", ranking["ranking"]
    assert order.index("crop") < order.index("color_jitter")
    assert ranking["dropped"] == ["color_jitter"] and ranking["groups"] == [["crop"]]
    assert (tmp_path / "runs" / "rank_hue_rank" / "ranking.png").stat().st_size > 0
    from hicl.api import list_runs

    pilots = [row for row in list_runs(tmp_path / "runs") if row["name"].startswith("rank_hue_rank_")]
    assert len(pilots) == 6 and {row["state"] for row in pilots} == {"finished"}, pilots

    ranked = load_manifest(written)  # validates
    assert ranked.augment.ops == ["crop"] and ranked.hierarchy.mode == "add_one"
    assert ranked.hierarchy.groups == [["crop"]] and ranked.hierarchy.embeddings.ops == []
    assert "# dropped color_jitter: harmful" in written.read_text()

    again = runner.invoke(app, args)  # every pilot is read back, none retrained
    assert again.exit_code == 0, again.output
    assert again.output.count("(reused)") == 6 and "pretrained in" not in again.output

    # the same pilots with Student's intervals: same means and sds, widths 2 t_{0.975, n-1} sd / sqrt(n)
    student = runner.invoke(app, [*args[:4], "--interval", "student", "--out", str(tmp_path / "student")])
    assert student.exit_code == 0, student.output
    assert "Student's t" in student.output and "pretrained in" not in student.output
    wide = json.loads((tmp_path / "student" / "ranking.json").read_text())
    assert wide["interval"] == "student" and ranking["interval"] == "normal"
    for normal_row, student_row in zip(ranking["ranking"], wide["ranking"]):
        normal_drop, student_drop = normal_row["drop"], student_row["drop"]
        assert (student_drop["mean"], student_drop["sd"]) == (normal_drop["mean"], normal_drop["sd"])
        sd, n = normal_drop["sd"], normal_drop["n"]
        assert normal_drop["high"] - normal_drop["low"] == pytest.approx(2 * 1.959964 * sd / n**0.5, abs=0.01)
        assert student_drop["high"] - student_drop["low"] == pytest.approx(2 * t975(n - 1) * sd / n**0.5, abs=0.02)


def test_interval_normal_and_students():
    # mean 2, sd 1 over 3 values: half-width 1.96 / sqrt(3), or t_{0.975, 2} / sqrt(3) = 4.303 / 1.732
    drop = interval([1.0, 2.0, 3.0])
    assert drop.mean == pytest.approx(2.0) and drop.sd == pytest.approx(1.0)
    assert drop.high - drop.mean == pytest.approx(1.959964 / 3**0.5, abs=1e-9)
    assert interval([1.0, 2.0, 3.0], student=True).low == pytest.approx(2.0 - 4.303 / 3**0.5, abs=1e-9)
    assert interval([5.0]).low == interval([5.0]).high == 5.0
    # the table against the closed forms for 1 and 2 degrees of freedom: tan(pi (p - 1/2)), (2p - 1) / sqrt(2p(1 - p))
    assert t975(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-3)
    assert t975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=1e-3)
    # the expansion beyond the table meets the table's last entries (t_{0.975, 30} = 2.042, df 60: 2.000)
    assert t975(31) == pytest.approx(2.040, abs=2e-3) and t975(60) == pytest.approx(2.000, abs=2e-3)


def test_verdicts_and_tie_groups():
    drops = {"a": interval([10.0, 11.0, 12.0]), "b": interval([9.0, 10.0, 11.5]), "c": interval([1.0, 1.5, 2.0]),
             "d": interval([-3.0, -2.5, -2.0]), "e": interval([-1.0, 1.0, 0.5]), "f": interval([1.2, 1.4, 1.3])}
    assert [verdict(drops[k]) for k in "abcdef"] == ["needed", "needed", "needed", "harmful", "unclear", "needed"]
    # b's mean lies inside a's interval: one group; c starts the next, f's mean is inside c's, e's is not
    assert tie_groups(["a", "b", "c", "f", "e"], drops) == [["a", "b"], ["c", "f"], ["e"]]
    assert tie_groups(["a", "c", "e"], drops, max_groups=1) == [["a", "c", "e"]]


def test_spearman_matches_the_closed_form():
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, 0, 1, -1) -> 1 - 12 / 60
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)


@pytest.mark.parametrize("option", [["--seeds", "a"], ["--seeds", "1,1"], ["--method", "guess"], ["--interval", "wide"]])
def test_bad_options_are_one_line(tmp_path, option):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: m\n")
    result = runner.invoke(app, ["rank-augmentations", str(manifest), *option])
    assert result.exit_code == 2 and result.output.startswith(f"error: {option[0]}")
    assert len(result.output.strip().splitlines()) == 1


def test_ops_never_applied_are_those_with_p_0_in_both_views(tmp_path):
    from hicl.ranking.leave_one_out import never_applied

    def named(augment: dict) -> list[str]:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"name": "m", "augment": augment}))
        return never_applied(load_manifest(path))

    ops = ["crop", "color_jitter", "blur", "flip"]
    assert named({"ops": ops}) == []
    assert named({"ops": ops, "blur": {"p": 0.0}, "flip": {"p": 0.0}}) == canonical(["blur", "flip"])
    # a view that applies it makes the op count
    assert named({"ops": ops, "blur": {"p": 0.0}, "views": [{"blur": {"p": 1.0}}, {}]}) == []
    assert named({"ops": ops, "views": [{"blur": {"p": 0.0}}, {"blur": {"p": 0.0}}]}) == ["blur"]


def test_written_manifest_drops_every_mention_of_a_harmful_op(tmp_path):
    from hicl.ranking.leave_one_out import OpRank, Ranking, RankRequest
    from hicl.ranking.written import write_ranked_manifest

    source = tmp_path / "m.yaml"
    source.write_text(yaml.safe_dump({
        "name": "m", "output": {"name": "mine"},
        "hierarchy": {"mode": "off", "stages": ["s3", "s4"], "loss_weights": [1.0, 1.0],
                      "embeddings": {"ops": ["color_jitter", "blur"], "stages": [2]}},
        "augment": {"ops": ["crop", "color_jitter", "blur", "flip"], "views": [{"blur": {"p": 1.0}}, {"color_jitter": {"p": 0.5}}]},
    }))
    drops = {"crop": [9.0, 10.0], "flip": [2.0, 2.5], "blur": [2.2, 2.1], "color_jitter": [-5.0, -6.0]}
    ops = [OpRank(op, dict(enumerate(d)), interval(d), verdict(interval(d))) for op, d in drops.items()]
    ranking = Ranking("class", [0, 1], interval([50.0, 51.0]), ops, [["crop"], ["flip", "blur"]], [])
    written = write_ranked_manifest(RankRequest(source), ranking, tmp_path / "ranked.yaml")
    ranked = load_manifest(written)
    assert ranked.name == "m_ranked" and ranked.output.name == "mine_ranked"
    assert ranked.augment.ops == canonical(["crop", "blur", "flip"]) and ranked.hierarchy.mode == "add_one"
    assert ranked.hierarchy.groups == [["crop"], ["flip", "blur"]] and ranked.hierarchy.stages is None
    assert ranked.hierarchy.embeddings.ops == ["blur"] and ranked.hierarchy.embeddings.stages == [2]
    assert ranked.augment.views == [{"blur": {"p": 1.0}}, {}]
    assert "#   color_jitter: -5.50 points" in written.read_text()
