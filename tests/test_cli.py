"""The command line: bad input ends in one line naming the field, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.manifest import Manifest, load_manifest

runner = CliRunner()
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def write(tmp_path: Path, data: dict | str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


BAD_MANIFESTS = [
    ({"name": "x", "optim": {"lr": -0.1}}, "optim.lr"),
    ({"name": "x", "optim": {"batch_size": 0}}, "optim.batch_size"),
    ({"name": "x", "backbone": {"name": "resnet_does_not_exist"}}, "backbone.name"),
    ({"name": "x", "method": {"name": "dino"}}, "method.name"),
    ({"name": "x", "optim": {"lr": "fast"}}, "optim.lr"),
    ({"name": "x", "data": {"image_size": 4}}, "data.image_size"),
    ({"name": "x", "bogus_section": {}}, "bogus_section"),
    ({"name": "x", "optim": {"learning_rate": 0.1}}, "optim.learning_rate"),
    ({"name": "x", "augment": {"flip": {"p": 1.5}}}, "augment.flip.p"),
    ({"name": "x", "augment": {"crop": {"scale": [0.9, 0.2]}}}, "augment.crop.scale"),
    ({"name": "x", "augment": {"color_jitter": {"hue": 0.7}}}, "augment.color_jitter.hue"),
    ({"name": "x", "augment": {"blur": {"kernel_size": 4}}}, "augment.blur.kernel_size"),
    ({"name": "x", "augment": {"ops": ["crop", "zoom"]}}, "augment.ops"),
    ({"name": "x", "hierarchy": {"mode": "add_one", "stages": ["layer3", "layer4"]}}, "hierarchy"),
    ({"name": "x", "hierarchy": {"mode": "sideways"}}, "hierarchy.mode"),
    ({"name": "x", "hierarchy": {"mode": "add_one", "loss_weights": [1, 1]}}, "hierarchy"),
    ({"name": "x", "schedule": {"epochs": 2, "warmup_epochs": 2}}, "schedule"),
    ({"name": "x", "runtime": {"device": "tpu"}}, "runtime.device"),
    ({"seed": 1}, "name"),
]


@pytest.mark.parametrize("data, field", BAD_MANIFESTS, ids=[f for _, f in BAD_MANIFESTS])
def test_bad_manifest_is_one_line_exit_2(tmp_path, data, field):
    result = runner.invoke(app, ["validate", str(write(tmp_path, data))])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and field in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content, expected",
    [("name: [unclosed", "not valid YAML"), ("- a\n- b\n", "mapping"), ("", "mapping")],
)
def test_malformed_yaml(tmp_path, content, expected):
    result = runner.invoke(app, ["validate", str(write(tmp_path, content))])
    assert result.exit_code == 2 and expected in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_manifest(tmp_path):
    result = runner.invoke(app, ["pretrain", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "manifest not found" in result.output


@pytest.mark.parametrize("override, field", [("optim.lr=-1", "optim.lr"), ("optim", "--set"), ("optim.nope=1", "optim.nope")])
def test_bad_override(tmp_path, override, field):
    result = runner.invoke(app, ["validate", str(write(tmp_path, {"name": "x"})), "--set", override])
    assert result.exit_code == 2 and field in result.output


def test_validate_prints_resolved_manifest_with_overrides(tmp_path):
    path = write(tmp_path, {"name": "x", "optim": {"lr": 0.1}})
    result = runner.invoke(app, ["validate", str(path), "--set", "optim.batch_size=64", "--set", "augment.crop.scale=[0.3, 1.0]"])
    assert result.exit_code == 0
    resolved = yaml.safe_load(result.output)
    assert resolved["optim"] == {**Manifest(name="x").optim.model_dump(mode="json"), "lr": 0.1, "batch_size": 64}
    assert resolved["augment"]["crop"]["scale"] == [0.3, 1.0]
    # The resolved manifest is itself a valid manifest that resolves to the same thing.
    assert load_manifest(write(tmp_path, result.output, "resolved.yaml")).model_dump() == Manifest.model_validate(resolved).model_dump()


def test_schema_is_json_schema_of_manifest():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert set(schema["properties"]) == set(Manifest.model_fields)


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("pretrain", "probe-invariance", "linear-eval", "export", "validate", "schema"):
        assert command in result.output


def test_probe_invariance_rejects_what_it_cannot_probe_in_one_line(tmp_path):
    result = runner.invoke(app, ["probe-invariance", str(tmp_path)])
    assert result.exit_code == 2 and "not a run, checkpoint or export directory" in result.output
    result = runner.invoke(app, ["probe-invariance", "resnet_does_not_exist"])
    assert result.exit_code == 2 and "unknown timm model" in result.output


def test_bare_yaml_off_means_hierarchy_off(tmp_path):
    # YAML 1.1 reads `off` as false; the manifest takes it as the mode name.
    path = write(tmp_path, "name: x\nhierarchy:\n  mode: off\n")
    assert load_manifest(path).hierarchy.mode == "off"
    assert load_manifest(write(tmp_path, {"name": "x"}, "y.yaml"), ["hierarchy.mode=off"]).hierarchy.mode == "off"


@pytest.mark.parametrize(
    "path", sorted(MANIFESTS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(MANIFESTS))
)
def test_every_shipped_manifest_validates(path):
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_a_hand_set_world_size_without_torchrun_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    path = write(tmp_path, {"name": "x", "output": {"dir": str(tmp_path / "runs")}})
    result = runner.invoke(app, ["pretrain", str(path)])
    assert result.exit_code == 2 and "MASTER_ADDR" in result.output and "torchrun" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
