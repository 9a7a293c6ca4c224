"""hicl from Python: every API function on tiny data, checked against the CLI and against independent loads."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import hicl
from hicl.cli import app
from hicl.errors import HiclError
from hicl.export.card import front_matter
from hicl.train.callbacks import Callback
from test_export import checkpointed_run
from test_pretrain import tiny_manifest

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dict(out: Path, name: str = "tiny", **sections) -> dict:
    """The tiny test manifest as the plain dict a notebook would write (one epoch, CPU)."""
    manifest = tiny_manifest(out, name=name, schedule={"epochs": 1}, eval={"epochs": 2, "batch_size": 32,
                             "after_pretrain": False}, **sections)
    return manifest.model_dump(mode="json")


def write_folder(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """An ImageFolder tree train/{a,b}, val/{a,b} of random PNGs (class b brighter)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for index, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 128, (size, size + 4 * (i % 3), 3)) + 100 * index
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def backbone_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last" / "backbone.safetensors")


# ----------------------------------------------------------------------------------------- start-up
_LOADED_AFTER = """
import sys
{statement}
print(",".join(n for n in ("torch._C", "timm.models", "torchvision") if n in sys.modules) or "none")
"""


@pytest.mark.parametrize("statement", [
    "import hicl",
    "import hicl; hicl.pretrain, hicl.embed, hicl.load_backbone",  # the API's names resolve without torch
    "from hicl.cli import run\ntry:\n    run(['validate', 'manifests/quickstart.yaml'])\nexcept SystemExit:\n    pass",
])
def test_import_hicl_and_validate_load_no_torch(statement):
    out = subprocess.run([sys.executable, "-c", _LOADED_AFTER.format(statement=statement)], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "none"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        hicl.no_such_function  # noqa: B018


# ----------------------------------------------------------------------------------------- pretrain
def test_pretrain_from_a_dict_equals_the_cli_from_yaml(tmp_path):
    raw = tiny_dict(tmp_path / "python")
    done = hicl.pretrain(raw)
    assert done.run_dir == tmp_path / "python" / "tiny" and np.isfinite(done.final_loss)
    cli_raw = {**raw, "output": {**raw["output"], "dir": str(tmp_path / "cli")}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cli_raw))
    result = runner.invoke(app, ["pretrain", str(tmp_path / "m.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    python, cli = backbone_weights(done.run_dir), backbone_weights(tmp_path / "cli" / "tiny")
    assert python.keys() == cli.keys()
    assert all(torch.equal(python[k], cli[k]) for k in python)
    assert any(not torch.equal(python[k], v) for k, v in backbone_weights_at_init(raw).items())  # it did train


def backbone_weights_at_init(raw: dict) -> dict[str, torch.Tensor]:
    from hicl.models.backbone import create_backbone

    torch.manual_seed(raw["seed"])
    return create_backbone(hicl.resolve_manifest(raw).backbone).state_dict()


def test_pretrain_errors_are_hicl_errors_with_the_cli_message(tmp_path):
    with pytest.raises(HiclError, match="optim.batch_size"):
        hicl.pretrain(tiny_dict(tmp_path), overrides=["optim.batch_size=0"])
    (tmp_path / "manifest.yaml").write_text("name: x\n")
    with pytest.raises(HiclError, match="pass --resume"):
        hicl.pretrain(tmp_path)


# ------------------------------------------------------------------------------ load_backbone, export
@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    return checkpointed_run(tmp_path_factory.mktemp("api"), "resnet", backbone={"name": "resnet18"},
                            augment={"normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}})


@pytest.fixture(scope="module")
def exports(resnet_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for fmt in ("timm", "hicl", "torchvision", "detectron2", "onnx"):
        if fmt == "onnx" and not _has("onnx"):
            continue
        result = hicl.export(resnet_run, root / fmt, fmt)
        assert root / fmt / "README.md" in result.files
        folders[fmt] = root / fmt
    return folders


def card_code(folder: Path) -> str:
    """The Python block of an export's README.md."""
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_load_backbone_gives_the_same_features_from_the_run_its_checkpoint_and_exports(resnet_run, exports):
    x = torch.randn(2, 3, 32, 32)
    reference, data_config = hicl.load_backbone(resnet_run)
    assert data_config.input_size == 32 and data_config.mean == (0.5, 0.4, 0.3) and data_config.std == (0.2, 0.25, 0.3)
    assert not reference.training
    with torch.no_grad():
        expected = reference(x)
        for target in (resnet_run / "checkpoints" / "last", exports["timm"], exports["hicl"], exports["torchvision"]):
            loaded = hicl.load_backbone(target)
            assert loaded.data_config == data_config, target
            torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=0)
        # the torchvision export, loaded by torchvision itself with the code its card shows
        namespace: dict = {}
        exec(card_code(exports["torchvision"]), namespace)
        tv = namespace["model"]
        torch.testing.assert_close(tv.eval()(x), expected, rtol=1e-5, atol=1e-5)
    for fmt in ("onnx", "detectron2"):  # for their own runtimes: refused in one line
        if fmt in exports:
            with pytest.raises(HiclError, match=f"a {fmt} export"):
                hicl.load_backbone(exports[fmt])
    if "onnx" in exports and _has("onnxruntime"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(exports["onnx"] / "backbone.onnx"))
        got = session.run(["features"], {"images": x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_every_export_folder_has_a_card_and_the_timm_card_runs(resnet_run, exports):
    for fmt, folder in exports.items():
        text = (folder / "README.md").read_text()
        assert "resnet18" in text and "simsiam" in text and "manifest sha256" in text, fmt
        assert ("library_name: timm" in text) == (fmt == "timm"), fmt
    card = (exports["timm"] / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "timm" and "timm" in meta["tags"] and meta["license"]
    namespace: dict = {}
    exec(card_code(exports["timm"]), namespace)  # the snippet as a user copies it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](x), hicl.load_backbone(resnet_run).model(x), rtol=0, atol=0)
    assert isinstance(namespace["model"], timm.models.ResNet)
    if "onnx" in exports and _has("onnxruntime"):
        onnx_namespace: dict = {}
        exec(card_code(exports["onnx"]), onnx_namespace)
        assert onnx_namespace["features"].shape == (1, 512)


# ------------------------------------------------------------------------------- embed, linear-eval
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folder_run")
    data = write_folder(root / "images")
    raw = tiny_dict(root / "runs", name="folder")
    raw["data"] = {"source": "folder", "root": str(data), "image_size": 32, "workers": 0}
    raw["optim"]["batch_size"] = 16
    return hicl.pretrain(raw).run_dir, data


def test_embed_on_a_folder_equals_linear_evals_feature_cache(folder_run):
    run, data = folder_run
    result = hicl.linear_eval(run)
    assert set(result["heads"]) == {"class"}
    with safe_open(run / "results" / "features" / "pretrained.safetensors", framework="pt") as f:
        (key,) = [k for k in f.keys() if k.startswith("train/") and "/labels/" not in k]
        cached, labels = f.get_tensor(key), f.get_tensor("train/labels/class")
    embedded = hicl.embed(run, data / "train", batch_size=7)  # another batch size than the cache's
    torch.testing.assert_close(embedded.last, cached, rtol=1e-5, atol=1e-5)
    assert [Path(n).parent.name for n in embedded.names] == ["a"] * 12 + ["b"] * 12
    from_manifest = hicl.embed(run, run / "manifest.yaml", split="train")
    torch.testing.assert_close(from_manifest.last, cached, rtol=1e-5, atol=1e-5)
    assert torch.equal(from_manifest.labels["class"], labels)


def test_embed_files_hold_the_same_rows_as_the_tensors(folder_run, tmp_path):
    run, data = folder_run
    expected = hicl.embed(run, data / "val", stage="all")
    result = runner.invoke(app, ["embed", str(run), "--data", str(data / "val"), "--out", str(tmp_path / "f.safetensors"),
                                 "--stage", "all", "--batch-size", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "img/s" in result.output
    stored = load_file(tmp_path / "f.safetensors")
    assert list(stored) == list(expected.features) or set(stored) == set(expected.features)
    for stage, x in expected.features.items():
        torch.testing.assert_close(stored[stage], x, rtol=1e-5, atol=1e-5)
    rows = list(csv.reader((tmp_path / "f.csv").open()))
    assert rows[0][:2] == ["index", "name"] and [r[1] for r in rows[1:]] == expected.names
    hicl.embed(run, data / "val", out=tmp_path / "g.npy")
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), expected.last.numpy(), rtol=1e-5, atol=1e-5)


def test_embed_refuses_bad_outputs_and_data_in_one_line(folder_run, tmp_path):
    run, _ = folder_run
    for out, data, message in ((tmp_path / "f.txt", tmp_path, "no known suffix"),
                               (tmp_path / "f.npy", tmp_path / "nothing", "neither a folder of images nor a manifest")):
        result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
        assert result.exit_code == 2 and message in result.output


def test_knn_and_probe_from_python_match_what_the_cli_writes(folder_run, tmp_path):
    run, _ = folder_run
    result = hicl.knn(run)
    import json

    assert json.loads((run / "results" / "knn.json").read_text())["heads"] == result["heads"]
    probed = hicl.probe_invariance(run, images=8, stages=["last"], out=tmp_path / "probe")
    assert probed.files == [tmp_path / "probe" / n for n in ("invariance.json", "invariance.csv", "invariance.png")]
    assert json.loads(probed.files[0].read_text())["targets"][0] == probed.targets[0].record


# ---------------------------------------------------------------------------------------- hicl runs
class StopAfterOneStep(Callback):
    def on_step_end(self, run, record):
        run.stop_signal = 2  # as if Ctrl-C (SIGINT) had been pressed


def test_runs_shows_finished_stopped_diverged_and_running(tmp_path):
    from hicl.lock import RunLock
    from hicl.train.signals import Stopped

    hicl.pretrain(tiny_dict(tmp_path, name="finished"))
    with pytest.raises(Stopped):
        hicl.pretrain(tiny_dict(tmp_path, name="stopped"), callbacks=[StopAfterOneStep()])
    with pytest.raises(HiclError, match="diverged"):
        hicl.pretrain(tiny_dict(tmp_path, name="diverged", optim={"batch_size": 32, "lr": 1e30}))
    locked = tmp_path / "locked"
    hicl.pretrain(tiny_dict(tmp_path, name="locked"))
    holder = subprocess.Popen([sys.executable, "-c", f"from hicl.lock import RunLock; import sys, time\n"
                               f"RunLock({str(locked)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        states = {r["name"]: r for r in hicl.list_runs(tmp_path)}
        result = runner.invoke(app, ["runs", str(tmp_path), "--json"])
    finally:
        holder.kill()
        holder.wait()
    assert {n: r["state"] for n, r in states.items()} == {
        "finished": "finished", "stopped": "stopped", "diverged": "diverged", "locked": "running"}
    assert states["finished"]["epochs_done"] == states["finished"]["epochs_planned"] == 1
    assert states["stopped"]["epochs_done"] == 0 and states["finished"]["final_loss"] is not None
    assert result.exit_code == 0 and '"state": "running"' in result.output
    with RunLock(locked):  # this process's own lock counts as well
        assert hicl.list_runs(locked)[0]["state"] == "running"
    compared = runner.invoke(app, ["runs", "--compare", str(tmp_path / "finished"), str(tmp_path / "diverged"), "--json"])
    assert compared.exit_code == 0 and '"optim.lr"' in compared.output and "1e+30" in compared.output


def test_embed_of_a_tensor_is_the_model_on_the_normalised_images(resnet_run):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model, data_config = hicl.load_backbone(resnet_run)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data_config.mean, data_config.std))
    with torch.no_grad():
        expected = model((images.float() / 255 - mean) / std)
    embedded = hicl.embed(resnet_run, images, batch_size=2)
    torch.testing.assert_close(embedded.last, expected, rtol=1e-5, atol=1e-5)
    assert embedded.names == [f"pretrain[{i}]" for i in range(5)] and embedded.labels == {}


def test_outcomes_name_how_a_session_ended():
    from hicl.train.outcome import outcome_of
    from hicl.train.signals import Stopped

    assert outcome_of(None) == "finished"
    assert outcome_of(Stopped(2, 5)) == outcome_of(KeyboardInterrupt()) == "stopped"
    assert outcome_of(Stopped(2, 5, reason="collapse: stage 1 rank 1.0")) == "collapsed"
    assert outcome_of(HiclError("training diverged by step 3 (loss nan); lower optim.lr")) == "diverged"
    assert outcome_of(RuntimeError("out of memory")) == "failed"
