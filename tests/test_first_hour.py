"""A new user's first commands: numbers as people write them, empty paths, the version."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.errors import HiclError
from hicl.manifest import load_manifest
from hicl.safe_yaml import read_yaml_text

QUICKSTART = Path(__file__).parent.parent / "manifests" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-6", 1e-6), ("1e6", 1e6), ("-2.5E+3", -2500.0), ("+1e3", 1000.0), ("1.0e-3", 1e-3), (".5", 0.5), ("3", 3)],
)
def test_scientific_notation_reads_as_a_number(text: str, value: float) -> None:
    parsed = read_yaml_text(text, "x")
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["1e", "e6", "1e-", "abc", "1.2.3"])
def test_words_that_only_look_numeric_stay_strings(text: str) -> None:
    assert read_yaml_text(text, "x") == text


def test_scientific_notation_in_a_manifest_and_in_an_override(tmp_path: Path) -> None:
    raw = yaml.safe_load(QUICKSTART.read_text())
    text = QUICKSTART.read_text().replace("weight_decay: 0.0005", "weight_decay: 1e-6")
    assert text != QUICKSTART.read_text() and raw["optim"]["weight_decay"] == 0.0005
    path = tmp_path / "m.yaml"
    path.write_text(text)
    manifest = load_manifest(path, ["optim.lr=1e-6"])
    assert manifest.optim.weight_decay == 1e-6 and manifest.optim.lr == 1e-6


def test_an_empty_output_dir_is_refused_in_one_line() -> None:
    with pytest.raises(HiclError, match="output.dir: expected a directory path, got an empty one"):
        load_manifest(QUICKSTART, ["output.dir="])
    assert load_manifest(QUICKSTART, ["output.dir=."]).output.dir == Path(".")


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"hicl {version('hicl')}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pretrain"], "error: Missing argument 'MANIFEST'. (see 'hicl pretrain --help')"),
        (["pretrain", "--bogus"], "error: No such option: --bogus (see 'hicl pretrain --help')"),
        (["no-such-command"], "error: No such command 'no-such-command'. (see 'hicl --help')"),
    ],
)
def test_a_usage_mistake_is_one_line_with_exit_2(args: list[str], expected: str, capsys) -> None:
    from hicl.cli import run

    with pytest.raises(SystemExit) as stopped:
        run(args)
    captured = capsys.readouterr()
    assert stopped.value.code == 2 and captured.err.strip() == expected and captured.out == ""


def test_help_and_version_exit_0_through_the_entry_point(capsys) -> None:
    from hicl.cli import run

    for args in (["--help"], [], ["--version"]):
        with pytest.raises(SystemExit) as stopped:
            run(args)
        assert stopped.value.code == 0, args
    assert "pretrain" in capsys.readouterr().out


@pytest.mark.parametrize("cut", ["truncated", "not_gzip"])
def test_a_broken_gzipped_idx_file_is_one_line(tmp_path: Path, cut: str) -> None:
    import gzip

    from hicl.data.arrays import read_idx

    payload = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(payload[: len(payload) // 2] if cut == "truncated" else b"plain bytes, not gzip")
    with pytest.raises(HiclError, match=r"train-labels-idx1-ubyte\.gz: not a complete gzip file"):
        read_idx(path)
    path.write_bytes(payload)
    assert read_idx(path).shape == (200,)


def test_pretrain_on_a_folder_of_manifests_says_what_it_is(tmp_path: Path, capsys) -> None:
    from hicl.cli import run

    (tmp_path / "a.yaml").write_text(QUICKSTART.read_text())
    with pytest.raises(SystemExit) as stopped:
        run(["pretrain", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2
    assert err == f"error: {tmp_path}: is a directory but not a run directory (no manifest.yaml); give a manifest file"


def test_a_wrong_backbone_kwarg_value_is_not_called_an_unknown_argument() -> None:
    from hicl.manifest import BackboneConfig
    from hicl.models.backbone import create_backbone

    vit = "vit_tiny_patch16_224"
    with pytest.raises(HiclError, match=rf"backbone.kwargs: timm cannot build {vit} with \{{'drop_rate': 'abc'\}}"):
        create_backbone(BackboneConfig(name=vit, kwargs={"drop_rate": "abc"}))
    with pytest.raises(HiclError, match=r"^backbone.kwargs: resnet18 does not take 'no_such_arg'$"):
        create_backbone(BackboneConfig(name="resnet18", kwargs={"no_such_arg": 1}))


# ------------------------------------------------------------------------------ switching with --set
def test_switching_the_data_source_with_set_drops_the_other_sources_keys(tmp_path: Path) -> None:
    assert "synthetic" in yaml.safe_load(QUICKSTART.read_text())["data"]
    manifest = load_manifest(QUICKSTART, ["data.source=folder", f"data.root={tmp_path}"])
    assert manifest.data.source == "folder" and manifest.data.root == tmp_path
    assert manifest.data.image_size == 32  # a key both sources have is kept
    back = load_manifest(QUICKSTART, ["data.source=synthetic"])  # setting the same source changes nothing
    assert back.data.synthetic.num_train == 5000


def test_switching_the_method_with_set_drops_the_other_methods_keys() -> None:
    manifest = load_manifest(QUICKSTART, ["method.name=byol"])
    assert manifest.method.name == "byol" and manifest.method.proj_dim == 128  # shared key kept
    assert not hasattr(manifest.method, "temperature")  # simclr's key dropped


def test_an_unknown_source_given_by_set_is_still_named() -> None:
    with pytest.raises(HiclError, match="unknown data source; expected one of"):
        load_manifest(QUICKSTART, ["data.source=fold"])


# ------------------------------------------------------------------------------ short runs, small data
def test_a_warmup_longer_than_a_shortened_run_names_the_fix() -> None:
    with pytest.raises(HiclError, match=r"warmup_epochs \(10\) must be less than epochs \(2\).*"
                       r"--set schedule.warmup_epochs=0"):
        load_manifest(QUICKSTART, ["schedule.epochs=2", "schedule.warmup_epochs=10"])


def _small_folder(root: Path, per_class: int, classes: int = 2) -> None:
    from PIL import Image

    for split, count in (("train", per_class), ("val", 4)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (40 + i, 30 + 2 * i), (60 + 150 * k, 90, 40 + 7 * i)).save(folder / f"{i}.png")


def test_a_batch_larger_than_the_data_names_a_batch_that_fits(tmp_path: Path) -> None:
    _small_folder(tmp_path / "images", per_class=10)
    args = ["pretrain", str(QUICKSTART), "--set", "data.source=folder", "--set", f"data.root={tmp_path / 'images'}",
            "--set", "optim.batch_size=512", "--set", f"output.dir={tmp_path / 'runs'}", "--set", "data.workers=0",
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "optim.batch_size: 512 is larger than the 20 training images" in result.output
    assert "--set optim.batch_size=16" in result.output


def test_the_own_images_smoke_manifest_runs_as_the_readme_says(tmp_path: Path) -> None:
    smoke = QUICKSTART.parent / "own_images_smoke.yaml"
    assert f"hicl pretrain manifests/{smoke.name} --set data.root=" in (QUICKSTART.parent.parent / "README.md").read_text()
    _small_folder(tmp_path / "images", per_class=16)  # 32 images: the smallest folder it is sized for
    args = ["pretrain", str(smoke), "--set", f"data.root={tmp_path / 'images'}", "--set", f"output.dir={tmp_path}",
            "--set", "schedule.epochs=2", "--set", "eval.epochs=2", "--set", "data.workers=0", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = tmp_path / "own_images_smoke" / "results"
    assert (results / "linear_eval.json").is_file() and (results / "training.png").stat().st_size > 10_000


def test_a_vit_img_size_other_than_the_view_size_is_refused_while_validating() -> None:
    vit = ["backbone.name=vit_tiny_patch16_224"]
    with pytest.raises(HiclError, match=r"backbone.kwargs.img_size: 48 is not the 32 px view size; "
                                        r"set backbone.kwargs.img_size=32"):
        load_manifest(QUICKSTART, [*vit, "backbone.kwargs.img_size=48"])
    with pytest.raises(HiclError, match=r"img_size: \[32, 48\] is not the 32 px"):
        load_manifest(QUICKSTART, [*vit, "backbone.kwargs.img_size=[32, 48]"])
    assert load_manifest(QUICKSTART, [*vit, "backbone.kwargs.img_size=32"]).backbone.kwargs == {"img_size": 32}
