"""`--format onnx`: the backbone as a feature extractor graph, checked with onnxruntime when installed.

    OUT/backbone.onnx    input `images` float32 [batch, 3, S, S] (normalised RGB), output `features`
                         [batch, num_features] (the global-pooled features); the batch axis is dynamic,
                         and with `--dynamic-size` height and width too (for detection and segmentation)

Exported with torch's TorchScript-based exporter (`dynamo=False`) at opset 17: in torch 2.9+ the default
(dynamo) exporter also needs the `onnxscript` package, this one only `onnx`, and for these feed-forward
backbones both give a plain graph. `pip install 'hicl[onnx]'` installs onnx and onnxruntime; with
onnxruntime the export is run on a test batch of another size than the one traced (so the dynamic batch
axis is exercised too) and the max abs difference to PyTorch is reported; with `--dynamic-size` also on
a second, larger image size (a backbone whose graph cannot take it, such as a ViT with fixed position
embeddings, is refused).
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
SECOND_SIZE_STEP = 32  # --dynamic-size is also checked this many pixels above the traced size


def check(source: ExportSource, options: ExportOptions) -> None:
    """Any backbone (the graph carries its architecture, small stem included); torch's exporter needs `onnx`."""
    if importlib.util.find_spec("onnx") is None:
        raise HiclError("--format onnx: the onnx package is not installed; pip install 'hicl[onnx]'")


def onnxruntime_max_abs_diff(path: Path, model: torch.nn.Module, sizes: list[int]) -> float | None:
    """max |onnxruntime - torch| over seeded test batches at `sizes`, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for size in sizes:
        x = torch.randn(CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            (onnx_out,) = session.run(["features"], {"images": x.numpy()})
        except Exception as exc:  # onnxruntime raises its own exception types for shape errors
            raise HiclError(f"--dynamic-size: the exported graph cannot run {size} px images "
                            f"({str(exc).splitlines()[0][:200]}); export without --dynamic-size") from None
        with torch.no_grad():
            diffs.append(float((torch.from_numpy(onnx_out) - model(x)).abs().max()))
    return max(diffs)


def export(source: ExportSource, out: Path, options: ExportOptions) -> ExportResult:
    model = source.backbone()
    size = source.manifest.view_size
    path = out / GRAPH
    example = torch.zeros(TRACE_BATCH, 3, size, size)
    image_axes = {0: "batch", 2: "height", 3: "width"} if options.dynamic_size else {0: "batch"}
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
            dynamic_axes={"images": image_axes, "features": {0: "batch"}},
        )
    _add_metadata(path, source.metadata())
    sizes = [size, size + SECOND_SIZE_STEP] if options.dynamic_size else [size]
    diff = onnxruntime_max_abs_diff(path, model, sizes)
    normalize = source.manifest.augment.normalize
    shape = "[batch, 3, height, width]" if options.dynamic_size else f"[batch, 3, {size}, {size}]"
    checked = " and ".join(f"{s} px" for s in sizes)
    notes = [
        f"opset {OPSET}; input 'images' float32 {shape} RGB normalised with "
        f"mean {list(normalize.mean)}, std {list(normalize.std)}; output 'features' [batch, {model.num_features}]",
        "onnxruntime not installed: not checked (pip install 'hicl[onnx]')"
        if diff is None
        else f"onnxruntime check: max abs diff to PyTorch {diff:.2e} on a batch of {CHECK_BATCH} at {checked}",
    ]
    return ExportResult(
        files=[path],
        notes=notes,
        record={"opset": OPSET, "input": "images", "output": "features", "dynamic_size": options.dynamic_size,
                "checked_sizes": sizes if diff is not None else [], "onnxruntime_max_abs_diff": diff},
    )


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Provenance as ONNX metadata_props."""
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
