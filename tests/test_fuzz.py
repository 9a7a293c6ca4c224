"""Hostile input: every bad manifest, override, run directory, checkpoint and export target ends in
exactly one line on stderr, the documented exit code (2 for a user's mistake), no traceback, and no
file outside the run directory touched (canary files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hicl.cli import app
from hicl.manifest import MAX_EPOCHS

runner = CliRunner()

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"image_size": 32, "synthetic": {"num_train": 64, "num_test": 32}},
    "backbone": {"name": "regnetx_002"},
    "method": {"name": "simsiam", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "optim": {"batch_size": 32, "lr": 0.05},
    "schedule": {"epochs": 2},
    "runtime": {"log_every": 1, "device": "cpu"},
    "eval": {"epochs": 2, "batch_size": 32},
}


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under `root` but those inside `skip` (the run directory), with its bytes."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and (skip is None or not path.is_relative_to(skip)):
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path with canaries: a file beside the runs, another run's checkpoint, a file in the parent."""
    (tmp_path / "runs" / "other" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "checkpoints" / "keep.bin").write_bytes(b"other run's weights")
    (tmp_path / "runs" / "canary.txt").write_text("do not delete")
    (tmp_path / "canary.txt").write_text("do not delete either")
    return tmp_path


def manifest_file(root: Path, overrides: dict | None = None, text: str | bytes | None = None) -> Path:
    path = root / "m.yaml"
    if text is not None:
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    else:
        data = json.loads(json.dumps(TINY))
        data["output"] = {"dir": str(root / "runs")}
        for dotted, value in (overrides or {}).items():
            node = data
            *parents, last = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        path.write_text(yaml.safe_dump(data))
    return path


def invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int = 2, contains: str | None = None, after_info: bool = False) -> None:
    """Exit `code` with one `error:` line; `after_info`: a run that started may print its info lines first."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    if after_info:
        assert not any(line.startswith("error: ") for line in lines[:-1]), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert len(lines[0]) <= 1100
    assert "Traceback" not in result.output
    if contains is not None:
        assert contains in lines[0], lines[0]


def check_untouched(root: Path, before: dict[str, bytes], run_dir: Path | None = None) -> None:
    assert snapshot(root, run_dir) == before


# ---------------------------------------------------------------------------------------------- manifests
BAD_VALUES = {
    # silent coercions: a bool or a string is not a number, a number is not a bool
    "bool batch size": ({"optim.batch_size": True}, "optim.batch_size"),
    "string batch size": ({"optim.batch_size": "64"}, "optim.batch_size"),
    "float batch size": ({"optim.batch_size": 64.5}, "optim.batch_size"),
    "string lr": ({"optim.lr": "0.1"}, "optim.lr"),
    "bool lr": ({"optim.lr": True}, "optim.lr"),
    "string seed 1e29": ({"seed": "1e29"}, "seed"),
    "int small_stem": ({"backbone.small_stem": 1}, "backbone.small_stem"),
    "string epochs": ({"schedule.epochs": "ten"}, "schedule.epochs"),
    "list lr": ({"optim.lr": [0.1]}, "optim.lr"),
    "dict seed": ({"seed": {"a": 1}}, "seed"),
    "null epochs": ({"schedule.epochs": None}, "schedule.epochs"),
    # non-finite floats
    "inf lr": ({"optim.lr": float("inf")}, "optim.lr"),
    "nan lr": ({"optim.lr": float("nan")}, "optim.lr"),
    "inf temperature": ({"method.name": "simclr", "method.temperature": float("inf")}, "method.temperature"),
    "inf weight decay": ({"optim.weight_decay": float("inf")}, "optim.weight_decay"),
    "nan normalize mean": ({"augment.normalize.mean": [float("nan"), 0.4, 0.4]}, "augment.normalize.mean"),
    "nan momentum": ({"method.name": "byol", "method.momentum": float("nan")}, "method.momentum"),
    "nan crop scale": ({"augment.crop.scale": [float("nan"), 1.0]}, "augment.crop.scale"),
    "-inf barlow lambda": ({"method.name": "barlow_twins", "method.lambd": float("-inf")}, "method.lambd"),
    "inf loss weight": ({"hierarchy.mode": "add_one", "hierarchy.loss_weights": [1, 1, 1, float("inf")]}, "hierarchy"),
    # sizes that would exhaust memory or time
    "huge output size": ({"augment.output_size": 1_000_000}, "augment.output_size"),
    "huge image size": ({"data.image_size": 100_000}, "data.image_size"),
    "huge num_train": ({"data.synthetic.num_train": 1_000_000_000}, "data.synthetic.num_train"),
    "huge epochs": ({"schedule.epochs": 1_000_000_000}, "schedule.epochs"),
    "huge batch": ({"optim.batch_size": 10**7}, "optim.batch_size"),
    "huge proj dim": ({"method.proj_dim": 10**9}, "method.proj_dim"),
    "huge hidden dim": ({"method.proj_hidden_dim": 10**6}, "method.proj_hidden_dim"),
    "huge queue": ({"method.name": "moco_v2", "method.queue_size": 10**9}, "method.queue_size"),
    "huge embedding dim": ({"hierarchy.embeddings.dim": 10**6}, "hierarchy.embeddings.dim"),
    "huge seed": ({"seed": 10**29}, "seed"),
    "huge eval epochs": ({"eval.epochs": 10**9}, "eval.epochs"),
    "huge threads": ({"runtime.threads": 10**6}, "runtime.threads"),
    "blur kernel above view": ({"augment.blur.kernel_size": 99}, "augment.blur.kernel_size"),
    "vit img_size not the view size": (
        {"backbone.name": "vit_tiny_patch16_224", "backbone.kwargs": {"img_size": 224}}, "backbone.kwargs.img_size"),
    "warmup as long as the run": ({"schedule.warmup_epochs": 2}, "--set schedule.warmup_epochs=0"),
    "negative seed": ({"seed": -1}, "seed"),
    # names that would climb out of, or stand for, the output directory
    "name dot": ({"name": "."}, "name"),
    "name dotdot": ({"name": ".."}, "name"),
    "name hidden": ({"name": ".git"}, "name"),
    "name with slash": ({"name": "a/b"}, "name"),
    "name absolute": ({"name": "/etc"}, "name"),
    "name backslash": ({"name": "a\\b"}, "name"),
    "name empty": ({"name": ""}, "name"),
    "name NUL": ({"name": "a\x00b"}, "name"),
    "name too long": ({"name": "x" * 300}, "name"),
    "name not ascii": ({"name": "r\u00e9sum\u00e9"}, "name"),
    "output name dotdot": ({"output.name": ".."}, "output.name"),
    "output name dot": ({"output.name": "."}, "output.name"),
    "output name climbing": ({"output.name": "../../x"}, "output.name"),
    "output name absolute": ({"output.name": "/tmp/x"}, "output.name"),
    "output dir NUL": ({"output.dir": "runs\x00x"}, "output.dir"),
    # backbone arguments hicl owns, or that load a pickle
    "features_only": ({"backbone.kwargs": {"features_only": True}}, "backbone.kwargs"),
    "checkpoint_path": ({"backbone.kwargs": {"checkpoint_path": "some.pth"}}, "backbone.kwargs"),
    "pretrained kwarg": ({"backbone.kwargs": {"pretrained": True}}, "backbone.kwargs"),
    "kwargs not a mapping": ({"backbone.kwargs": [1, 2]}, "backbone.kwargs"),
    "unknown backbone": ({"backbone.name": "resnet19"}, "backbone.name"),
    # structure
    "section is a list": ({"optim": [1, 2]}, "optim"),
    "section is a scalar": ({"schedule": 3}, "schedule"),
    "unknown key": ({"optim.learning_rate": 0.1}, "optim.learning_rate"),
    "device gpu": ({"runtime.device": "gpu"}, "runtime.device"),
    "huge string value": ({"runtime.device": "g" * 500_000}, "runtime.device"),
}


@pytest.mark.parametrize("overrides, field", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_manifest_value(sandbox, overrides, field):
    before = snapshot(sandbox)
    path = manifest_file(sandbox, overrides)
    before = snapshot(sandbox)
    for command in (["validate", path], ["pretrain", path, "--overwrite", "--no-progress"]):
        result = invoke(command)
        assert_one_line_error(result, contains=field)
    check_untouched(sandbox, before)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)

BAD_TEXTS = {
    "duplicate top-level key": ("name: a\nseed: 1\nseed: 2\n", "twice"),
    "duplicate nested key": ("name: a\noptim:\n  lr: 0.1\n  lr: 0.2\n", "twice"),
    "alias bomb": (ALIAS_BOMB, "aliases"),
    "deep flow nesting": ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    "deep block nesting": ("name: a\n" + "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v: 1\n", "nested"),
    "file above 1 MB": ("name: a\n#" + "x" * 1_100_000 + "\n", "at most"),
    "random bytes": (bytes(range(256)) * 4, "UTF-8"),
    "latin-1": ("name: caf\u00e9\n".encode("latin-1"), "UTF-8"),
    "NUL byte": ("name: a\x00b\n", "YAML"),
    "utf-16": ("name: a\n".encode("utf-16"), "UTF-8"),
    "binary tag": ("name: !!binary aGVsbG8=\n", "name"),
    "date value": ("name: 2020-01-01\n", "name"),
    "set tag": ("name: a\nbackbone: {kwargs: !!set {a, b}}\n", "backbone"),
    "python tag": ("name: !!python/object/apply:os.system [echo hi]\n", "YAML"),
    "top-level list": ("- a\n- b\n", "mapping"),
    "top-level scalar": ("just text\n", "mapping"),
    "empty file": ("", "mapping"),
    "tab indentation": ("name: a\noptim:\n\tlr: 0.1\n", "YAML"),
    "unclosed bracket": ("name: [a\n", "YAML"),
    "missing name": ("seed: 1\n", "name"),
    "unhashable key": ("? [a, b]\n: 1\nname: a\n", "YAML"),
    "unknown top-level section": ("base: {lr: 0.1}\nname: a\n", "base"),
}


@pytest.mark.parametrize("text, expected", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_bad_manifest_text(sandbox, text, expected):
    path = manifest_file(sandbox, text=text)
    before = snapshot(sandbox)
    result = invoke(["validate", path])
    assert_one_line_error(result, contains=expected)
    check_untouched(sandbox, before)


BAD_OVERRIDES = {
    "yes batch size": ("optim.batch_size=yes", "optim.batch_size"),
    "true batch size": ("optim.batch_size=true", "optim.batch_size"),
    "inf lr": ("optim.lr=.inf", "optim.lr"),
    "no key": ("=1", "--set"),
    "empty key part": ("optim..lr=1", "--set"),
    "trailing dot": ("optim.=1", "--set"),
    "no equals": ("optim", "--set"),
    "not a section": ("name.x=1", "name"),
    "bad YAML value": ("optim.lr=[unclosed", "--set"),
    "alias in value": ("optim.lr=*a", "--set"),
    "python tag in value": ("optim.lr=!!python/object/apply:os.system [ls]", "--set"),
    "seed 1e29": ("seed=1e29", "seed"),
    "name dotdot": ("name=..", "name"),
    "output name climbing": ("output.name=../x", "output.name"),
    "huge value": ("runtime.device=" + "x" * 100_000, "runtime.device"),
    "duplicate key in value": ("backbone.kwargs={a: 1, a: 2}", "twice"),
    "empty output dir": ("output.dir=", "output.dir: expected a directory path, got an empty one"),
    "unknown source": ("data.source=fold", "unknown data source"),
    "unknown method": ("method.name=simsam", "unknown method.name"),
    "lr 1e-6 then a bad key": ("optim.lr_=1e-6", "optim.lr_"),
}


@pytest.mark.parametrize("override, field", BAD_OVERRIDES.values(), ids=BAD_OVERRIDES.keys())
def test_bad_override(sandbox, override, field):
    path = manifest_file(sandbox)
    before = snapshot(sandbox)
    assert_one_line_error(invoke(["validate", path, "--set", override]), contains=field)
    check_untouched(sandbox, before)



def _short_png_folder(root: Path) -> Path:
    from test_data import png_bytes, write_folder

    write_folder(root / "images", {"train": 2, "val": 1})
    (root / "images" / "train" / "a" / "short.png").write_bytes(png_bytes(100, 100, b"\x00" * 50))
    return root / "images"


def _pixel_bomb_folder(root: Path) -> Path:
    from test_data import png_bytes, write_folder

    write_folder(root / "images", {"train": 2, "val": 1})
    (root / "images" / "train" / "b" / "bomb.png").write_bytes(png_bytes(20_000, 20_000, b"\x00" * 10))
    return root / "images"


BAD_DATA = {  # hostile files on disk: each stops the run with one line naming the file
    "short png, workers 0": (_short_png_folder, {"data.workers": 0}, "short.png"),
    "short png, workers 1": (_short_png_folder, {"data.workers": 1}, "short.png"),
    "pixel bomb png": (_pixel_bomb_folder, {"data.workers": 0}, "bomb.png"),
}


@pytest.mark.parametrize("make, extra, named", BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_image_files_fail_in_one_line_naming_the_file(sandbox, make, extra, named):
    root = make(sandbox)
    data = {"data": {"source": "folder", "root": str(root), "image_size": 32, "on_bad_image": "fail",
                     "resident": "never", **{k.split(".")[1]: v for k, v in extra.items()}},
            "optim.batch_size": 7, "schedule.epochs": 1}  # one batch holds every image
    path = manifest_file(sandbox, data)
    before = snapshot(sandbox, sandbox / "runs" / "tiny")
    assert_one_line_error(invoke(["pretrain", path, "--no-progress"]), contains=named, after_info=True)
    check_untouched(sandbox, before, sandbox / "runs" / "tiny")


def test_a_missing_webdataset_shard_and_a_cut_gzip_are_one_line(sandbox):
    pytest.importorskip("webdataset")
    import gzip

    from test_data import write_shard

    for k in (0, 2):
        write_shard(sandbox / f"train-{k:06d}.tar", 4, 4 * k)
    shards = {"source": "webdataset", "train_shards": str(sandbox / "train-{000000..000002}.tar"), "num_classes": 2}
    assert_one_line_error(invoke(["pretrain", manifest_file(sandbox, {"data": shards}), "--no-progress"]),
                          contains="train-000001.tar does not exist")
    idx = sandbox / "idx"
    idx.mkdir()
    payload = gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 28 * 28))
    (idx / "train-images-idx3-ubyte.gz").write_bytes(payload[: len(payload) // 2])
    (idx / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7])))
    result = invoke(["pretrain", manifest_file(sandbox, {"data": {"source": "mnist", "root": str(idx)}}), "--no-progress"])
    assert_one_line_error(result, contains="not a complete gzip file")

def test_device_message_says_got_once(sandbox):
    result = invoke(["validate", manifest_file(sandbox), "--set", "runtime.device=gpu"])
    assert_one_line_error(result)
    assert result.stderr.count("got 'gpu'") == 1


def test_backbone_typo_suggests_the_close_name(sandbox):
    result = invoke(["validate", manifest_file(sandbox), "--set", "backbone.name=resnet19"])
    assert_one_line_error(result, contains="resnet18")


def test_epoch_bound_is_in_the_message(sandbox):
    result = invoke(["validate", manifest_file(sandbox), "--set", "schedule.epochs=1000000000"])
    assert_one_line_error(result, contains=f"{MAX_EPOCHS}")


# ----------------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny finished run (2 epochs), copied by every test that breaks it."""
    root = tmp_path_factory.mktemp("trained")
    result = invoke(["pretrain", manifest_file(root), "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


def copy_run(trained: Path, sandbox: Path) -> Path:
    run = sandbox / "runs" / "tiny"
    shutil.copytree(trained, run)
    manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    manifest["output"]["dir"] = str(sandbox / "runs")
    (run / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return run


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_meta(run: Path, edit) -> None:
    meta_path = run / "checkpoints" / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(edit(meta)))


BREAKAGES = {
    "truncated meta.json": (lambda r: _truncate(r / "checkpoints/last/meta.json"), "meta.json"),
    "meta.json missing epoch": (lambda r: _edit_meta(r, lambda m: {k: v for k, v in m.items() if k != "epoch"}), "epoch"),
    "meta.json not an object": (lambda r: (r / "checkpoints/last/meta.json").write_text("[1, 2]"), "meta.json"),
    "meta.json epoch not an int": (lambda r: _edit_meta(r, lambda m: {**m, "epoch": "2"}), "meta.json"),
    "flipped byte in backbone": (lambda r: flip_byte(r / "checkpoints/last/backbone.safetensors"), "backbone.safetensors"),
    "flipped byte in heads": (lambda r: flip_byte(r / "checkpoints/last/heads.safetensors"), "heads.safetensors"),
    "truncated trainer": (lambda r: _truncate(r / "checkpoints/last/trainer.safetensors"), "trainer.safetensors"),
    "garbage backbone, hash dropped": (
        lambda r: ((r / "checkpoints/last/backbone.safetensors").write_bytes(b"\x00" * 64),
                   _edit_meta(r, lambda m: {k: v for k, v in m.items() if k != "sha256"})),
        "backbone.safetensors",
    ),
    "missing heads file": (lambda r: (r / "checkpoints/last/heads.safetensors").unlink(), "checkpoint"),
    "corrupt run manifest": (lambda r: (r / "manifest.yaml").write_bytes(b"\xff\xfe garbage"), "manifest.yaml"),
    "run manifest duplicate key": (lambda r: (r / "manifest.yaml").write_text("name: tiny\nname: tiny\n"), "twice"),
}
RESUME_ONLY = {"flipped byte in heads", "truncated trainer"}


@pytest.mark.parametrize("name", BREAKAGES)
@pytest.mark.parametrize("command", ["resume", "linear-eval", "export"])
def test_broken_run(trained, sandbox, name, command):
    if command != "resume" and name in RESUME_ONLY:
        pytest.skip("linear-eval and export read only the backbone")
    run = copy_run(trained, sandbox)
    breakage, expected = BREAKAGES[name]
    breakage(run)
    before = snapshot(sandbox, run)
    args = {
        "resume": ["pretrain", "--resume", run, "--set", "schedule.epochs=3", "--no-progress"],
        "linear-eval": ["linear-eval", run],
        "export": ["export", run, "--out", sandbox / "export"],
    }[command]
    assert_one_line_error(invoke(args), contains=expected)
    check_untouched(sandbox, before, run)
    assert not (sandbox / "export" / "model.safetensors").exists()


def test_no_verify_skips_the_hash(trained, sandbox):
    run = copy_run(trained, sandbox)
    flip_byte(run / "checkpoints/last/backbone.safetensors")
    assert invoke(["export", run, "--out", sandbox / "export", "--no-verify"]).exit_code == 0


RUN_STATES = {
    "output dir is a file": (lambda s: (s / "runs_file").write_text("x"), {"output.dir": "runs_file"}, [], "runs_file"),
    "foreign directory with --overwrite": (
        lambda s: (shutil.rmtree(s / "runs" / "tiny"), (s / "runs" / "tiny").mkdir(),
                   (s / "runs" / "tiny" / "thesis.tex").write_text("mine")),
        {}, ["--overwrite"], "not a hicl run directory",
    ),
    "existing run without flags": (None, {}, [], "--resume"),
    "resume and overwrite": (None, {}, ["--resume", "--overwrite"], "exclude"),
    "resume with no run": (lambda s: shutil.rmtree(s / "runs" / "tiny"), {}, ["--resume"], "no checkpoint"),
    "checkpoints symlinked outside": (
        lambda s: (shutil.rmtree(s / "runs" / "tiny" / "checkpoints"),
                   (s / "runs" / "tiny" / "checkpoints").symlink_to(s / "runs" / "other" / "checkpoints")),
        {}, ["--overwrite"], "outside the run directory",
    ),
    "metrics symlinked to a canary": (
        lambda s: ((s / "runs" / "tiny" / "metrics.jsonl").unlink(),
                   (s / "runs" / "tiny" / "metrics.jsonl").symlink_to(s / "canary.txt")),
        {}, ["--overwrite"], "outside the run directory",
    ),
    "fewer epochs than reached": (None, {"schedule.epochs": 1}, ["--resume"], "schedule.epochs"),
    "changed training setting": (None, {"optim.lr": 0.5}, ["--resume"], "different manifest"),
    "garbage line in metrics": (
        lambda s: (s / "runs" / "tiny" / "metrics.jsonl").write_text('{"kind": "step", "step": 1, "loss": 1.0}\nnot json\n{}\n'),
        {"schedule.epochs": 3}, ["--resume"], "metrics.jsonl",
    ),
}


@pytest.mark.parametrize("name", RUN_STATES)
def test_bad_run_directory_state(trained, sandbox, name):
    setup, overrides, flags, expected = RUN_STATES[name]
    run = copy_run(trained, sandbox)
    if setup is not None:
        setup(sandbox)
    manifest = manifest_file(sandbox, {k: (str(sandbox / v) if k == "output.dir" else v) for k, v in overrides.items()})
    recorded = (run / "manifest.yaml").read_bytes() if (run / "manifest.yaml").exists() else None
    before = snapshot(sandbox, run)
    started = time.perf_counter()
    assert_one_line_error(invoke(["pretrain", manifest, *flags, "--no-progress"]), contains=expected)
    check_untouched(sandbox, before, run)
    if name in {"fewer epochs than reached", "changed training setting"}:
        assert (run / "manifest.yaml").read_bytes() == recorded  # never rewritten to disagree with the weights
    if name == "foreign directory with --overwrite":
        assert (run / "thesis.tex").read_text() == "mine"
    if name in {"existing run without flags", "resume and overwrite", "foreign directory with --overwrite"}:
        assert time.perf_counter() - started < 60  # sanity only: these are refused before data generation


def test_command_targets(trained, sandbox):
    """Run-directory arguments that are wrong in themselves."""
    run = copy_run(trained, sandbox)
    before = snapshot(sandbox, run)
    (sandbox / "a_file").write_text("x")
    (sandbox / "ro").mkdir()
    cases = [
        (["linear-eval", sandbox / "runs" / "nonexistent"], "no such run directory"),
        (["export", sandbox / "runs" / "nonexistent", "--out", sandbox / "e"], "no such run directory"),
        (["linear-eval", sandbox / "runs" / "other"], "not a hicl run directory"),
        (["pretrain", run], "--resume"),
        (["pretrain", "--resume", sandbox / "runs" / "other"], "not a hicl run directory"),
        (["pretrain", sandbox / "nope.yaml"], "manifest not found"),
        (["export", run, "--out", sandbox / "a_file"], "a_file"),
        (["export", run, "--out", sandbox / "a_file" / "sub"], "a_file"),
        (["export", run, "--format", "caffe", "--out", sandbox / "e"], "--format"),
        (["export", run, "--format", "x" * 10_000, "--out", sandbox / "e"], "--format"),
        (["linear-eval", run, "--set", "eval.heads=[nope]"], "eval.heads"),
        (["linear-eval", run, "--set", "backbone.name=resnet18"], "checkpoint"),
    ]
    before = snapshot(sandbox, run)
    for args, expected in cases:
        assert_one_line_error(invoke(args), contains=expected)
    check_untouched(sandbox, before, run)


def test_export_respects_a_writer_lock(trained, sandbox):
    run = copy_run(trained, sandbox)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from hicl.lock import RunLock; RunLock(sys.argv[1]).acquire(); print('ok', flush=True); time.sleep(60)",
         str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        for args in (["export", run, "--out", sandbox / "e"], ["linear-eval", run],
                     ["pretrain", "--resume", run, "--set", "schedule.epochs=3"]):
            assert_one_line_error(invoke(args), contains=f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores permissions")
def test_read_only_targets(trained, sandbox):
    run = copy_run(trained, sandbox)
    (sandbox / "ro").mkdir()
    os.chmod(sandbox / "ro", 0o555)
    try:
        assert_one_line_error(invoke(["export", run, "--out", sandbox / "ro" / "e"]), contains="ro")
        path = manifest_file(sandbox, {"output.dir": str(sandbox / "ro")})
        assert_one_line_error(invoke(["pretrain", path, "--no-progress"]), contains="ro")
    finally:
        os.chmod(sandbox / "ro", 0o755)


def test_unexpected_error_is_one_line_exit_1(monkeypatch, sandbox):
    import hicl.manifest

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hicl.manifest, "load_manifest", boom)
    result = invoke(["validate", manifest_file(sandbox)])
    assert_one_line_error(result, code=1, contains="HICL_DEBUG=1")
