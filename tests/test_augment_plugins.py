"""Users' own ops: a module named in `augment.plugins` registers an op that then works everywhere.

The op is `channel_shuffle` from tests/hicl_channel_shuffle.py (the example of docs/extending.md); no
other file names it. It pretrains in an add_one group, is embedded, appears in `hicl schema` and gets
a row in `hicl probe-invariance`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
import yaml
from typer.testing import CliRunner

from hicl.augment.op import OPS
from hicl.cli import app
from hicl.errors import HiclError
from hicl.manifest import manifest_from_dict
from hicl.registry import Registry, import_plugins

runner = CliRunner()
PLUGIN = "hicl_channel_shuffle"


def _manifest(tmp_path: Path, **augment: object) -> dict:
    return {
        "name": "plug",
        "seed": 1,
        "output": {"dir": str(tmp_path)},
        "data": {"image_size": 16, "synthetic": {"num_train": 32, "num_test": 16}},
        "backbone": {"name": "resnet18"},
        "method": {"name": "simsiam", "proj_hidden_dim": 16, "proj_dim": 16, "pred_hidden_dim": 8},
        "optim": {"batch_size": 16},
        "schedule": {"epochs": 1},
        "hierarchy": {
            "mode": "add_one",
            "stages": ["layer3", "layer4"],
            "groups": [["crop", "channel_shuffle"], ["flip"]],
            "embeddings": {"ops": ["channel_shuffle", "crop"], "stages": [1, 2]},
        },
        "augment": {"plugins": [PLUGIN], "ops": ["crop", "channel_shuffle", "flip"], **augment},
    }


def test_a_plugin_op_pretrains_embedded_in_add_one_and_shows_in_schema_and_probe(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(_manifest(tmp_path, channel_shuffle={"p": 0.9})))
    result = runner.invoke(app, ["pretrain", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "plug"
    env = json.loads((run / "env.json").read_text())
    assert [r["module"] for r in env["plugins"]] == [PLUGIN] and len(env["plugins"][0]["sha256"]) == 64
    resolved = yaml.safe_load((run / "manifest.yaml").read_text())
    assert resolved["augment"]["channel_shuffle"] == {"p": 0.9}

    validated = runner.invoke(app, ["validate", str(path)])
    assert validated.exit_code == 0 and validated.output.startswith(f"# imports plugin module={PLUGIN} sha256=")

    schema = runner.invoke(app, ["schema", "--plugin", PLUGIN])
    assert schema.exit_code == 0, schema.output
    assert "channel_shuffle" in json.loads(schema.output)["$defs"]["AugmentConfig"]["properties"]

    probed = runner.invoke(app, ["probe-invariance", str(run), "--images", "16", "--stages", "layer4",
                                 "--out", str(tmp_path / "probe")])
    assert probed.exit_code == 0, probed.output
    cells = json.loads((tmp_path / "probe" / "invariance.json").read_text())["targets"][0]["cells"]
    assert any(c["op"] == "channel_shuffle" and c["classes"] == 6 for c in cells)


def test_the_plugin_op_is_sampled_embedded_and_applied_as_torchvision_permutes_channels():
    import_plugins([PLUGIN], "test")
    from hicl.augment.hierarchy import StageAugmenter

    manifest = manifest_from_dict(_manifest(Path("runs")))
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, 16)
    assert augmenter.embed_dim == 9 + 4
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    stage_views = augmenter(images, torch.Generator().manual_seed(1))
    order = stage_views.params[0]["channel_order"]
    assert order.shape == (128, 3) and sorted(order[0].tolist()) == [0, 1, 2]
    assert (order != torch.arange(3)).any(dim=1).any()
    vectors = stage_views.param_vectors[0]
    torch.testing.assert_close(vectors[:, :9].view(-1, 3, 3).argmax(-1), order)

    x = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    params = {"channel_order": torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(i)) for i in range(8)])}
    mine = OPS["channel_shuffle"].apply(x, params, manifest.augment.channel_shuffle, None)
    for i in range(8):
        torch.testing.assert_close(mine[i], TF.permute_channels(x[i], params["channel_order"][i].tolist()))


@pytest.mark.parametrize(
    ("augment", "expected"),
    [
        ({"plugins": ["no_such_module_xyz"]}, "cannot import plugin module 'no_such_module_xyz'"),
        ({"plugins": ["../evil.py"]}, "not a Python module name"),
        ({"ops": ["crop", "cutout_that_nobody_registered"]}, "unknown augmentation op 'cutout_that_nobody_registered'"),
        ({"views": [{"solarize": {"p": 0.2}}, {}]}, "views.0.solarize: not an op of the pipeline"),
        ({"views": [{"blur": {"p": 2.0}}, {}]}, "views.0.blur: p: Input should be less than or equal to 1"),
    ],
)
def test_plugin_op_and_view_mistakes_are_one_line_exit_2(tmp_path, augment, expected):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "augment": augment}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_registry_refuses_duplicates_and_lists_known_names():
    registry: Registry[int] = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        registry.register("a", 2)
    with pytest.raises(HiclError, match="unknown widget 'b'; expected one of a"):
        registry["b"]


def test_importing_the_op_registry_does_not_run_torch():
    code = (
        "import sys, hicl.augment.ops, hicl.augment.op\n"
        "torch = sys.modules.get('torch')\n"
        "assert torch is None or type(torch).__name__ == '_LazyModule', 'torch was executed'\n"
        "assert 'torch._C' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_an_op_registered_in_the_process_is_not_an_op_of_a_manifest_without_its_plugin(tmp_path):
    import_plugins([PLUGIN], "test")
    plain = manifest_from_dict({"name": "x"})
    assert "channel_shuffle" not in type(plain.augment).model_fields  # the resolved manifest keeps its meaning
    for raw, where in (({"augment": {"ops": ["crop", "channel_shuffle"]}}, "augment.ops"),
                       ({"hierarchy": {"groups": [["crop"], ["channel_shuffle"]]}}, "hierarchy")):
        with pytest.raises(HiclError, match=f"{where}.*'channel_shuffle' is registered by a module that augment.plugins"):
            manifest_from_dict({"name": "x", **raw})
