"""Linear evaluation: the classifiers on features with known answers; stages and the paper protocol on a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hicl.cli import app
from hicl.evaluate.linear import fit_linear_probes, step_decay_lr
from hicl.manifest import EvalConfig


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 12, generator=g)
    x[torch.arange(n), y] += 6.0  # class c has a large coordinate c: linearly separable
    return x, y


def test_linearly_separable_features_reach_100_and_shuffled_labels_chance():
    train_x, train_y = separable(600, 0)
    test_x, test_y = separable(400, 1)
    cfg = EvalConfig(epochs=10, batch_size=64)
    scores = fit_linear_probes(train_x, {"y": train_y}, test_x, {"y": test_y}, {"y": 4}, cfg, seed=0)
    assert scores["y"].top1 > 0.99
    # labels shuffled in both splits: no longer a function of the features
    g = torch.Generator().manual_seed(3)
    shuffled_train, shuffled_test = train_y[torch.randperm(600, generator=g)], test_y[torch.randperm(400, generator=g)]
    scores = fit_linear_probes(train_x, {"y": shuffled_train}, test_x, {"y": shuffled_test}, {"y": 4}, cfg, seed=0)
    assert abs(scores["y"].top1 - 0.25) < 0.07


def test_step_decay_multiplies_by_a_tenth_at_each_milestone():
    lrs = [step_decay_lr(s, 100, 30.0, [0.6, 0.8]) for s in (0, 59, 60, 79, 80, 99)]
    assert lrs == pytest.approx([30.0, 30.0, 3.0, 3.0, 0.3, 0.3])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    runner = CliRunner()
    manifest = tmp / "m.yaml"
    manifest.write_text(
        f"name: tiny\noutput: {{dir: {tmp}}}\ndata: {{image_size: 16, synthetic: {{num_train: 64, num_test: 32}}}}\n"
        "backbone: {name: resnet18}\nmethod: {name: simsiam, proj_hidden_dim: 32, proj_dim: 32, pred_hidden_dim: 16}\n"
        "optim: {batch_size: 32}\nschedule: {epochs: 1}\neval: {epochs: 2, batch_size: 32, random_init_baseline: false}\n"
    )
    result = runner.invoke(app, ["pretrain", str(manifest), "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "tiny"


def test_linear_eval_all_stages_paper_protocol_and_knn_record_provenance(tiny_run):
    runner = CliRunner()
    result = runner.invoke(app, ["linear-eval", str(tiny_run), "--stage", "all", "--protocol", "paper"])
    assert result.exit_code == 0, result.output
    scores = json.loads((tiny_run / "results" / "linear_eval.json").read_text())
    assert list(scores["stages"]) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert scores["protocol"]["name"] == "paper" and scores["protocol"]["milestones"] == [0.6, 0.8]
    assert len(scores["checkpoint_hash"]) == 16 and len(scores["manifest_hash"]) == 16
    assert set(scores["data_fingerprint"]) == {"train", "test"}
    for entry in scores["stages"].values():
        for row in entry["heads"].values():
            assert 0.0 <= row["pretrained"]["top1"] <= 1.0
    result = runner.invoke(app, ["knn", str(tiny_run), "--stage", "2"])
    assert result.exit_code == 0, result.output
    knn = json.loads((tiny_run / "results" / "knn.json").read_text())
    assert list(knn["stages"]) == ["layer1"] and knn["protocol"]["k"] == 200
    result = runner.invoke(app, ["linear-eval", str(tiny_run), "--stage", "layer9"])
    assert result.exit_code == 2 and "layer9" in result.output


def test_probe_reads_a_run_its_timm_export_and_its_hicl_export_alike(tiny_run, tmp_path):
    runner = CliRunner()
    outputs = {}
    for name, target in (("run", tiny_run), ("timm", tmp_path / "timm"), ("hicl", tmp_path / "hicl")):
        if name != "run":
            result = runner.invoke(app, ["export", str(tiny_run), "--format", name, "--out", str(target)])
            assert result.exit_code == 0, result.output
        out = tmp_path / f"probe_{name}"
        result = runner.invoke(app, ["probe-invariance", str(target), "--images", "32", "--stages", "layer4",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads((out / "invariance.json").read_text())
    # the same weights on the same images: the same invariance, whichever way the backbone arrived
    # (the timm export carries no data section, so only the run and the hicl export share the images)
    assert outputs["run"]["targets"][0]["cells"] == outputs["hicl"]["targets"][0]["cells"]
    assert outputs["timm"]["targets"][0]["stages"] == outputs["run"]["targets"][0]["stages"] == ["layer4"]


def test_fast_protocols_stream_the_splits_and_match_them_decoded(tiny_run, monkeypatch):
    from safetensors.torch import load_file

    from hicl.data.fingerprint import tensor_fingerprint
    from hicl.data.loader import load_split
    from hicl.evaluate import linear
    from hicl.evaluate.features import model_input, pretrained_backbone
    from hicl.manifest import load_manifest

    manifest = load_manifest(tiny_run / "manifest.yaml")
    decoded = {split: load_split(manifest.data, split, manifest.view_size) for split in ("train", "test")}

    def refuse(*args, **kwargs):
        raise AssertionError("the fast protocols must not decode a whole split into memory")

    monkeypatch.setattr(linear, "load_split", refuse)
    runner = CliRunner()
    for command in ("linear-eval", "knn"):
        result = runner.invoke(app, [command, str(tiny_run)])
        assert result.exit_code == 0, result.output
    knn = json.loads((tiny_run / "results" / "knn.json").read_text())
    assert knn["data_fingerprint"] == {split: tensor_fingerprint(d.images) for split, d in decoded.items()}
    cached = load_file(tiny_run / "results" / "features" / "pretrained.safetensors")
    backbone, _ = pretrained_backbone(manifest, tiny_run / "checkpoints" / "last")
    with torch.no_grad():
        for split, images in decoded.items():
            assert len(images.labels) > 1  # the synthetic heads: shape, hue, ...
            for head, labels in images.labels.items():
                assert torch.equal(cached[f"{split}/labels/{head}"], labels)
            expected = backbone.eval()(model_input(images.images, manifest.view_size, manifest.augment.normalize))
            assert torch.allclose(cached[f"{split}/layer4"], expected, rtol=1e-4, atol=1e-5)


def test_cached_features_are_recomputed_for_other_data(tiny_run):
    runner = CliRunner()
    result = runner.invoke(app, ["knn", str(tiny_run)])
    assert result.exit_code == 0, result.output
    full = json.loads((tiny_run / "results" / "knn.json").read_text())["data_fingerprint"]
    result = runner.invoke(app, ["knn", str(tiny_run), "--set", "data.max_images=16"])
    assert result.exit_code == 0, result.output
    subset = json.loads((tiny_run / "results" / "knn.json").read_text())["data_fingerprint"]
    assert subset["train"] != full["train"] and subset["test"] != full["test"]


def test_probe_on_a_small_test_split_uses_all_of_it_and_says_so(tiny_run, tmp_path):
    out = tmp_path / "probe_default"
    result = CliRunner().invoke(app, ["probe-invariance", str(tiny_run), "--stages", "layer4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the test split has 32 images, fewer than the 512 asked for; using all 32" in result.output
    assert json.loads((out / "invariance.json").read_text())["targets"][0]["protocol"]["images"] == 32
