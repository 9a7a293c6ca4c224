"""`--format torchvision`: a ResNet-family state dict that `torchvision.models.<name>()` loads.

    OUT/<name>.safetensors   torchvision's keys, everything but `fc` (the SSL backbone has no classifier)
    OUT/<name>.pth           the same dict via torch.save, with --pth

Load: `model = torchvision.models.resnet50(); model.fc = torch.nn.Identity(); model.load_state_dict(sd)`
(strict), or keep `fc` and load with `strict=False`: then exactly `fc.weight` and `fc.bias` are missing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from hicl.export.base import ExportOptions, ExportResult, ExportSource, save_tensors
from hicl.export.resnet_family import resnet_spec

CLASSIFIER_KEYS = {"fc.weight", "fc.bias"}


def check(source: ExportSource, options: ExportOptions) -> None:
    resnet_spec(source, "torchvision")


def torchvision_state(source: ExportSource) -> dict[str, torch.Tensor]:
    """The backbone state, proven to fit torchvision's model of the same name (strict apart from fc)."""
    state = dict(source.backbone_state)
    model = torchvision.models.get_model(source.architecture, weights=None)
    result = model.load_state_dict(state, strict=False)
    if set(result.missing_keys) != CLASSIFIER_KEYS or result.unexpected_keys:
        raise RuntimeError(  # a bug in the family table, not a user error
            f"{source.architecture}: timm and torchvision keys differ "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return state


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    name = source.architecture
    state = torchvision_state(source)
    files = [save_tensors(state, out / f"{name}.safetensors", {"format": "pt", **source.metadata()})]
    if options.pth:
        torch.save({k: v.contiguous() for k, v in state.items()}, out / f"{name}.pth")
        files.append(out / f"{name}.pth")
    load = (
        f"model = torchvision.models.{name}(); model.fc = torch.nn.Identity(); "
        f"model.load_state_dict(safetensors.torch.load_file({str(files[0])!r}))"
    )
    normalize = source.manifest.augment.normalize
    return ExportResult(
        files=files,
        notes=[
            f"load with: {load}",
            f"input: RGB, {source.manifest.view_size} px, mean {list(normalize.mean)}, std {list(normalize.std)}",
        ],
        record={"load": load},
    )
