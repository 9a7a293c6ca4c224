"""`hicl export`: every format loaded back by its consumer gives hicl's features; refusals are one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from hicl.augment.hierarchy import StageAugmenter
from hicl.cli import app
from hicl.evaluate.features import pretrained_backbone
from hicl.export import EXPORTERS
from hicl.export.detectron2_resnet import detectron2_key, detectron2_state
from hicl.export.resnet_family import RESNETS
from hicl.models.network import build_model
from hicl.runs import RunDir
from hicl.train import loop as loop_module
from hicl.train.checkpoint import save_checkpoint
from hicl.train.device import view_dtype
from test_pretrain import tiny_manifest

runner = CliRunner()
SIZE = 32


def checkpointed_run(root: Path, name: str, **sections) -> Path:
    """A run folder with a checkpoint as pretraining leaves it (weights moved by an optimiser step, so
    the momentum buffers exist; BN statistics away from their init, so exports must carry buffers too)."""
    manifest = tiny_manifest(root, name=name, **sections)
    torch.manual_seed(1)
    augmenter = StageAugmenter(manifest.hierarchy, manifest.augment, manifest.view_size, view_dtype(manifest.runtime))
    model = build_model(manifest, augmenter.embed_dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    with torch.no_grad():
        for key, buffer in model.named_buffers():
            if key.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif key.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    run = RunDir(manifest.run_dir)
    run.start(manifest, resume=False, overwrite=False)
    save_checkpoint(run.last_checkpoint, model, optimizer, {}, {"epoch": 1, "step": 1})
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "resnet": checkpointed_run(
            root, "resnet", backbone={"name": "resnet18"}, hierarchy={"mode": "add_one", "adapter": "pool_linear"},
            augment={"normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}},
        ),
        "regnet": checkpointed_run(root, "regnet"),
        "small_stem": checkpointed_run(root, "small", backbone={"name": "resnet18", "small_stem": True}),
    }


def export(run: Path, fmt: str, out: Path, *extra: str):
    return runner.invoke(app, ["export", str(run), "--format", fmt, "--out", str(out), *extra])


def hicl_features(run: Path, x: torch.Tensor) -> torch.Tensor:
    from hicl.runs import open_run

    _, manifest = open_run(run)
    model, _ = pretrained_backbone(manifest, run / "checkpoints" / "last")
    with torch.no_grad():
        return model.eval()(x)


def test_format_choices_and_help_come_from_the_registry(tmp_path):
    help_text = runner.invoke(app, ["export", "--help"], terminal_width=400).output
    for name in EXPORTERS:
        assert name in help_text
    assert set(EXPORTERS) == {"timm", "torchvision", "detectron2", "onnx", "hicl"}
    result = export(tmp_path, "caffe", tmp_path / "o")
    assert result.exit_code == 2 and "--format" in result.output


def test_timm_folder_loads_via_local_dir_and_via_overlay(runs, tmp_path):
    out = tmp_path / "timm"
    result = export(runs["resnet"], "timm", out)
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "export.json"):
        assert f"wrote {out / name} (" in result.output  # with its size
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    expected = hicl_features(runs["resnet"], x)

    local = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    overlay = timm.create_model(
        "resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")), num_classes=0
    ).eval()
    fresh = timm.create_model("resnet18", num_classes=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(local(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(overlay(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fresh(x), expected, atol=1e-3)  # the weights were really loaded

    data = timm.data.resolve_data_config(model=local)  # what a timm user's preprocessing will use
    assert tuple(data["input_size"]) == (3, SIZE, SIZE)
    assert data["mean"] == pytest.approx((0.5, 0.4, 0.3)) and data["std"] == pytest.approx((0.2, 0.25, 0.3))

    with safe_open(out / "model.safetensors", framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["architecture"] == "resnet18" and meta["method"] == "simsiam" and meta["hierarchy"] == "add_one"
    assert meta["epochs"] == "1" and len(meta["manifest_sha256"]) == 16 and meta["hicl"]
    backbone = load_file(runs["resnet"] / "checkpoints" / "last" / "backbone.safetensors")
    assert keys == set(backbone)  # the backbone only: no heads, no optimiser state


def test_torchvision_loads_strictly_and_gives_the_same_features(runs, tmp_path):
    out = tmp_path / "tv"
    result = export(runs["resnet"], "torchvision", out, "--pth")
    assert result.exit_code == 0, result.output
    state = load_file(out / "resnet18.safetensors")
    assert state.keys() == torch.load(out / "resnet18.pth", weights_only=True).keys()

    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(out / "resnet18.pth", weights_only=True))  # strict
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), hicl_features(runs["resnet"], x), rtol=1e-5, atol=1e-5)


def test_torchvision_and_detectron2_name_the_architectures_they_support(runs, tmp_path):
    for fmt in ("torchvision", "detectron2"):
        result = export(runs["regnet"], fmt, tmp_path / fmt)
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert "\n" not in line and "regnetx_002" in line and "resnet50" in line and "wide_resnet50_2" in line
        assert not (tmp_path / fmt).exists()  # refused before anything was written


@pytest.mark.parametrize("name", list(RESNETS))
def test_resnet_family_table_matches_timm_and_torchvision(name):
    """Same keys and shapes in timm and torchvision (built on the meta device: no memory, no init cost),
    and detectron2's RESNETS values read off the timm model itself."""
    spec = RESNETS[name]
    with torch.device("meta"):
        mine = timm.create_model(name, num_classes=0)
        theirs = torchvision.models.get_model(name, weights=None)
    shapes = {k: v.shape for k, v in mine.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    first = mine.layer1[0]
    assert first.conv2.groups == spec.num_groups
    assert first.conv2.in_channels == spec.num_groups * spec.width_per_group
    last_conv = mine.layer1[-1].conv2 if spec.depth in (18, 34) else mine.layer1[-1].conv3
    assert last_conv.out_channels == spec.res2_out_channels
    assert len({detectron2_key(k) for k in shapes}) == len(shapes)  # every key maps, none collide


RESNET50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


def expected_detectron2_names() -> dict[str, str]:
    """detectron2 name -> timm name for ResNet-50, written out from the architecture, not from the rules."""
    bn = ("weight", "bias", "running_mean", "running_var")
    names = {"stem.conv1.weight": "conv1.weight"} | {f"stem.conv1.norm.{p}": f"bn1.{p}" for p in bn}
    for stage, blocks in RESNET50_BLOCKS.items():
        for block in range(blocks):
            d2, tv = f"res{stage}.{block}", f"layer{stage - 1}.{block}"
            for conv in (1, 2, 3):
                names[f"{d2}.conv{conv}.weight"] = f"{tv}.conv{conv}.weight"
                names |= {f"{d2}.conv{conv}.norm.{p}": f"{tv}.bn{conv}.{p}" for p in bn}
            if block == 0:
                names[f"{d2}.shortcut.weight"] = f"{tv}.downsample.0.weight"
                names |= {f"{d2}.shortcut.norm.{p}": f"{tv}.downsample.1.{p}" for p in bn}
    return names


def test_detectron2_key_mapping_on_resnet50_key_by_key():
    state = timm.create_model("resnet50", num_classes=0).state_dict()
    converted = detectron2_state(state)
    expected = expected_detectron2_names()
    assert len(expected) == 5 + 16 * 15 + 4 * 5  # stem; 16 blocks x 3 convs x (conv + 4 BN); 4 shortcuts
    assert sorted(converted) == sorted(expected)
    for d2_name, timm_name in expected.items():
        assert isinstance(converted[d2_name], np.ndarray), d2_name
        np.testing.assert_array_equal(converted[d2_name], state[timm_name].numpy(), err_msg=d2_name)


def test_detectron2_pickle_and_printed_config(runs, tmp_path):
    out = tmp_path / "d2"
    result = export(runs["resnet"], "detectron2", out)
    assert result.exit_code == 0, result.output
    with (out / "model.pkl").open("rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is True and data["__author__"] == "hicl"
    backbone = load_file(runs["resnet"] / "checkpoints" / "last" / "backbone.safetensors")
    assert len(data["model"]) == sum(not k.endswith("num_batches_tracked") for k in backbone)
    np.testing.assert_array_equal(data["model"]["res5.1.conv2.norm.running_var"], backbone["layer4.1.bn2.running_var"])
    pixel_values = ("127.5", "102.0", "76.5", "51.0", "63.75")  # mean 0.5, 0.4, 0.3 and std 0.2, 0.25, 0.3 in 0-255
    for text in (*pixel_values, "STRIDE_IN_1X1: false", "NORM: SyncBN", "FORMAT: RGB", "DEPTH: 18"):
        assert text in result.output, text


def test_onnx_matches_pytorch_through_onnxruntime(runs, tmp_path):
    pytest.importorskip("onnx")  # torch's exporter writes the graph with it
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    result = export(runs["regnet"], "onnx", out)
    assert result.exit_code == 0, result.output
    assert "opset 17" in result.output and "max abs diff" in result.output
    record = json.loads((out / "export.json").read_text())
    assert record["onnxruntime_max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))  # another batch size: dynamic axis
    (features,) = session.run(["features"], {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(features), hicl_features(runs["regnet"], x), rtol=1e-4, atol=1e-4)



def test_onnx_dynamic_size_runs_at_other_heights_and_widths(runs, tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    fixed, dynamic = tmp_path / "fixed", tmp_path / "dynamic"
    assert export(runs["regnet"], "onnx", fixed).exit_code == 0
    result = export(runs["regnet"], "onnx", dynamic, "--dynamic-size")
    assert result.exit_code == 0, result.output
    assert "[batch, 3, height, width]" in result.output and f"at {SIZE} px and {SIZE + 32} px" in result.output
    record = json.loads((dynamic / "export.json").read_text())
    assert record["dynamic_size"] is True and record["checked_sizes"] == [SIZE, SIZE + 32]
    x = torch.randn(2, 3, SIZE + 16, SIZE + 48, generator=torch.Generator().manual_seed(3))  # not square either
    session = onnxruntime.InferenceSession(str(dynamic / "backbone.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(features), hicl_features(runs["regnet"], x), rtol=1e-4, atol=1e-4)
    fixed_session = onnxruntime.InferenceSession(str(fixed / "backbone.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):  # without the flag the graph keeps the traced size
        fixed_session.run(["features"], {"images": x.numpy()})


def test_dynamic_size_is_for_onnx_only(runs, tmp_path):
    result = export(runs["regnet"], "timm", tmp_path / "t", "--dynamic-size")
    assert result.exit_code == 2 and "--dynamic-size: only --format onnx" in result.output


def test_hicl_state_round_trip_through_init_from(runs, tmp_path, monkeypatch):
    out = tmp_path / "hicl"
    result = export(runs["resnet"], "hicl", out)
    assert result.exit_code == 0, result.output
    last = runs["resnet"] / "checkpoints" / "last"
    backbone, heads = load_file(last / "backbone.safetensors"), load_file(last / "heads.safetensors")
    exported = load_file(out / "hicl.safetensors")
    assert exported.keys() == {f"backbone.{k}" for k in backbone} | {f"heads.{k}" for k in heads}
    assert any(".adapters." in k for k in exported) and any(".embedders." in k for k in exported)
    assert not any(k.startswith(("optimizer.", "rng.")) for k in exported)

    # Fine-tune on new data: another data seed and run folder; the model the optimiser gets is the export.
    captured = {}

    def capture(cfg, model, fixed):
        captured.update({k: v.clone() for k, v in model.state_dict().items()})
        raise KeyboardInterrupt  # stop before training: the state at the start of training is what counts

    monkeypatch.setattr(loop_module, "build_optimizer", capture)
    new_data = tiny_manifest(
        tmp_path, name="finetune", backbone={"name": "resnet18"},
        hierarchy={"mode": "add_one", "adapter": "pool_linear"}, data={"synthetic": {"seed": 9, "num_train": 64}},
    )
    with pytest.raises(KeyboardInterrupt):
        loop_module.pretrain(new_data, init_from=out, show_progress=False)
    prefix = "online.runner.model."  # where an unwrapped SSLModel keeps its backbone
    expected = {prefix + k: v for k, v in backbone.items()} | heads
    assert captured.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(captured[key], value), key


def test_init_from_refusals_are_one_line(runs, tmp_path):
    out = tmp_path / "hicl"
    assert export(runs["resnet"], "hicl", out).exit_code == 0
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps(tiny_manifest(tmp_path, name="other").model_dump(mode="json")))  # regnet model
    for args, expected in [
        (["--init-from", str(out)], "does not fit"),
        (["--init-from", str(runs["resnet"] / "checkpoints" / "last" / "backbone.safetensors")], "not an hicl state"),
        (["--init-from", str(tmp_path / "none")], "cannot read"),
        (["--init-from", str(out), "--resume"], "--init-from"),
    ]:
        result = runner.invoke(app, ["pretrain", str(other), "--no-progress", *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and expected in result.output, result.output
    assert not (tmp_path / "other").exists()  # no run folder for a refused start


@pytest.mark.parametrize("fmt", ["timm", "torchvision", "detectron2"])
def test_small_stem_is_refused_where_the_consumer_builds_the_stem(runs, tmp_path, fmt):
    result = export(runs["small_stem"], fmt, tmp_path / fmt)
    assert result.exit_code == 2 and "small_stem" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / fmt).exists()


def test_out_folder_rules(runs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert export(runs["regnet"], "hicl", out).exit_code == 0
    (out / "my_notes.txt").write_text("keep me")
    again = export(runs["regnet"], "hicl", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = export(runs["regnet"], "timm", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "export.json", "model.safetensors",
                                                     "my_notes.txt"]

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hicl.export.timm_folder.save_tensors", disk_full)
    failed = export(runs["regnet"], "timm", tmp_path / "failed")
    assert failed.exit_code != 0 and list((tmp_path / "failed").iterdir()) == []  # config.json removed again
    monkeypatch.undo()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    result = export(runs["regnet"], "timm", foreign, "--overwrite")
    assert result.exit_code == 2 and "did not write" in result.output
    assert (foreign / "config.json").read_text() == "{}"

    a_file = tmp_path / "file"
    a_file.write_text("")
    for target, expected in [(a_file, "is a file"), (a_file / "sub", "cannot write")]:
        result = export(runs["regnet"], "timm", target)
        assert result.exit_code == 2 and expected in result.output and len(result.output.strip().splitlines()) == 1

    result = export(runs["regnet"], "timm", tmp_path / "pth", "--pth")
    assert result.exit_code == 2 and "--pth" in result.output
