"""`--format onnx`: the backbone as a feature extractor graph, checked with onnxruntime when installed.

    OUT/backbone.onnx    input `images` float32 [batch, 3, S, S] (normalised RGB), output `features`
                         [batch, num_features] (the global-pooled features); the batch axis is dynamic

Exported with torch's TorchScript-based exporter (`dynamo=False`) at opset 17: in torch 2.9+ the default
(dynamo) exporter also needs the `onnxscript` package, this one only `onnx`, and for these feed-forward
backbones both give a plain graph. `pip install 'hicl[onnx]'` installs onnx and onnxruntime; with
onnxruntime the export is run on a test batch of another size than the one traced (so the dynamic batch
axis is exercised too) and the max abs difference to PyTorch is reported.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from hicl.errors import HiclError
from hicl.export.base import ExportOptions, ExportResult, ExportSource

GRAPH = "backbone.onnx"
OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 3


def check(source: ExportSource, options: ExportOptions) -> None:
    """Any backbone (the graph carries its architecture, small stem included); torch's exporter needs `onnx`."""
    if importlib.util.find_spec("onnx") is None:
        raise HiclError("--format onnx: the onnx package is not installed; pip install 'hicl[onnx]'")


def onnxruntime_max_abs_diff(path: Path, model: torch.nn.Module, size: int) -> float | None:
    """max |onnxruntime - torch| on a seeded test batch, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["features"], {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    return float((torch.from_numpy(onnx_out) - expected).abs().max())


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    model = source.backbone()
    size = source.manifest.view_size
    path = out / GRAPH
    example = torch.zeros(TRACE_BATCH, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )
    _add_metadata(path, source.metadata())
    diff = onnxruntime_max_abs_diff(path, model, size)
    normalize = source.manifest.augment.normalize
    notes = [
        f"opset {OPSET}; input 'images' float32 [batch, 3, {size}, {size}] RGB normalised with "
        f"mean {list(normalize.mean)}, std {list(normalize.std)}; output 'features' [batch, {model.num_features}]",
        "onnxruntime not installed: not checked (pip install 'hicl[onnx]')"
        if diff is None
        else f"onnxruntime check: max abs diff to PyTorch {diff:.2e} on a batch of {CHECK_BATCH}",
    ]
    return ExportResult(
        files=[path],
        notes=notes,
        record={"opset": OPSET, "input": "images", "output": "features", "onnxruntime_max_abs_diff": diff},
    )


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Provenance as ONNX metadata_props."""
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
