"""`hicl.lazy.lazy_import`: nothing is executed before the first attribute access."""

import subprocess
import sys

import pytest

from hicl.lazy import lazy_import


def test_a_lazy_module_runs_only_when_an_attribute_is_read(tmp_path):
    (tmp_path / "heavy_mod.py").write_text("import sys\nsys.heavy_loaded = True\nVALUE = 42\n")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from hicl.lazy import lazy_import\n"
        "m = lazy_import('heavy_mod')\n"
        "before = getattr(sys, 'heavy_loaded', False)\n"
        "value = m.VALUE\n"
        "print(before, getattr(sys, 'heavy_loaded', False), value, lazy_import('heavy_mod') is m)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "42", "True"]


def test_submodules_and_missing_modules_are_refused():
    with pytest.raises(ValueError, match="top-level"):
        lazy_import("torch.nn")
    with pytest.raises(ModuleNotFoundError):
        lazy_import("no_such_module_hicl_test")
