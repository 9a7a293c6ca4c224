"""`hicl export`: the pretrained backbone (or the whole SSL model) in formats other tools load.

One module per format, registered once in `EXPORTERS` (a `hicl.registry.Registry`); the CLI's
`--format` choices and help come from it. Each module provides `check(source, options)` (refuse before
anything is written) and `export(source, out, options) -> ExportResult`; `hicl.export.base.run_export`
does the rest (opening the run, the output folder, `export.json`, cleaning up after a failed export).

Adding a format: one module with those two functions, one `ExportFormat` line here, tests, docs/export.md.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

from hicl.errors import HiclError
from hicl.registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    name: str
    summary: str
    module: str  # imported only when used: `hicl --help` must not pay for torch, timm and onnx


EXPORTERS: Registry[ExportFormat] = Registry("format")
for _format in (
    ExportFormat("timm", "folder for timm.create_model('local-dir:OUT')", "hicl.export.timm_folder"),
    ExportFormat("torchvision", "ResNet state dict for torchvision.models", "hicl.export.torchvision_resnet"),
    ExportFormat("detectron2", "ResNet as a detectron2 .pkl + config values", "hicl.export.detectron2_resnet"),
    ExportFormat("onnx", "feature extractor graph with a dynamic batch axis", "hicl.export.onnx_model"),
    ExportFormat("hicl", "full SSL model + manifest, for `hicl pretrain --init-from`", "hicl.export.hicl_state"),
):
    EXPORTERS.register(_format.name, _format)


def check_format_name(name: str) -> None:
    """Refuse an unknown `--format` in one line, before torch or the run is touched."""
    if name not in EXPORTERS:
        raise HiclError(f"--format: {EXPORTERS.unknown(name)}")


class _ExportPackage(types.ModuleType):
    """`hicl.export` is this package and also the API function `hicl.api.export`: calling it exports a run
    (a package attribute of `hicl` cannot be a plain function without hiding the package)."""

    def __call__(self, *args, **kwargs):
        from hicl.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _ExportPackage
