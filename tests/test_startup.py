"""Reading and checking a manifest never loads torch or timm: `hicl validate` answers in well under a second."""

import subprocess
import sys

import pytest

from hicl.timm_names import is_timm_model, timm_model_names

# Executed in a fresh interpreter: this test process has long since loaded torch.
_LOADED_AFTER = """
import sys
{statement}
heavy = [name for name in ("torch._C", "timm.models", "torchvision") if name in sys.modules]
print(",".join(heavy) or "none")
"""


@pytest.mark.parametrize(
    "statement",
    [
        "import hicl.cli",
        "from hicl.manifest import load_manifest; load_manifest('manifests/quickstart.yaml', ['data.source=folder', 'data.root=x'])",
        "from hicl.manifest import Manifest; Manifest.model_json_schema()",
    ],
)
def test_the_manifest_path_loads_neither_torch_nor_timm(statement):
    script = _LOADED_AFTER.format(statement=statement)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "none"


def test_validate_through_the_entry_point_loads_no_torch(tmp_path):
    script = _LOADED_AFTER.format(
        statement="from hicl.cli import run\ntry:\n    run(['validate', 'manifests/quickstart.yaml'])\nexcept SystemExit:\n    pass"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "none"


def test_scanned_timm_names_are_timms_own():
    import timm

    assert timm_model_names() == frozenset(timm.list_models())
    for name in ("resnet18", "resnet18.a1_in1k", "vit_tiny_patch16_224", "resnet1", "not_a_model"):
        assert is_timm_model(name) == timm.is_model(name), name


@pytest.mark.parametrize("argv", [["linear-eval", "no/such/run"], ["knn", "tests"], ["export", "no/such/run", "--out", "x"],
                                  ["plot", "tests"]])
def test_a_missing_run_is_reported_before_torch_loads(argv):
    script = _LOADED_AFTER.format(statement=f"from hicl.cli import run\ntry:\n    run({argv!r})\nexcept SystemExit:\n    pass")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "none"
    assert result.stderr.startswith(f"error: {argv[1]}: ") and len(result.stderr.strip().splitlines()) == 1
