"""`hicl embed`: pooled features of every image of a folder, a manifest's data or a uint8 tensor, streamed.

Images go through exactly the evaluation transform of linear-eval and kNN (shorter side to
input_size / crop_pct, centre crop, normalisation) and the same pooled stage features (`StageFeatures`),
so `embed` on a split gives the rows of linear-eval's feature cache for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hicl.data.loader import eval_records, open_split
from hicl.data.source import ArraySplit, SplitData
from hicl.errors import HiclError
from hicl.evaluate.backbone_target import Backbone
from hicl.evaluate.feature_file import FeatureWriter
from hicl.evaluate.features import StageFeatures, model_input
from hicl.manifest import Manifest, manifest_from_dict, load_manifest

Records = Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]]


@dataclass
class Embeddings:
    """Features per stage (float32 [N, C], on the CPU), labels per head where the data has them, names."""

    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # what was written, when an output file was given
    images_per_s: float = 0.0

    @property
    def last(self) -> torch.Tensor:
        """The deepest embedded stage's features."""
        return self.features[list(self.features)[-1]]


@dataclass(frozen=True)
class EmbedData:
    """What to embed: its record batches (made on demand) and how many images there are."""

    records: Callable[[], Records]
    count: int
    description: str


def embed_data(data: Any, backbone: Backbone, split: str = "train", batch_size: int = 256) -> EmbedData:
    """A folder of images (any depth, unlabeled), a manifest (path, dict or Manifest: its data section's
    `split`), or uint8 images [N, 3, H, W]."""
    size, crop_pct = backbone.data_config.input_size, backbone.data_config.crop_pct
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or data.dim() != 4 or data.shape[1] != 3:
            raise HiclError(f"images: expected uint8 [N, 3, H, W], got {data.dtype} {list(data.shape)}")
        split_data: SplitData = ArraySplit(data, {}, {}, [])
        cfg = backbone.manifest.data.model_copy(update={"crop_pct": crop_pct})
        return EmbedData(lambda: eval_records(cfg, "pretrain", size, batch_size, split_data), len(data), "images")
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        from hicl.data.folder import FolderSource

        cfg = FolderSource(root=Path(data), train_split=".", labeled=False, crop_pct=crop_pct,
                           max_pixels=backbone.manifest.data.max_pixels, workers=backbone.manifest.data.workers)
        split = "pretrain"
    else:
        cfg = _manifest(data).data
    if split not in ("pretrain", "train", "test"):
        raise HiclError(f"split: {split!r}; expected pretrain, train or test")
    opened = open_split(cfg, split)  # type: ignore[arg-type]
    count = len(opened.images) if isinstance(opened, ArraySplit) else len(opened)
    return EmbedData(lambda: eval_records(cfg, split, size, batch_size, opened), count,  # type: ignore[arg-type]
                     f"{cfg.source} {split} split")


def _manifest(data: Any) -> Manifest:
    if isinstance(data, Manifest):
        return data
    if isinstance(data, dict):
        return manifest_from_dict(data)
    path = Path(data)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_manifest(path)
    raise HiclError(f"--data: {data} is neither a folder of images nor a manifest file")


def embed(backbone: Backbone, data: EmbedData, stages: list[str] | None = None, out: Path | None = None,
          device: torch.device | None = None, console: Console | None = None, progress: bool = True) -> Embeddings:
    """Features of every image of `data` at `stages` (default: the last); with `out`, written there as they
    come (nothing kept in memory but the labels), else returned."""
    device = device or torch.device("cpu")
    stage_features = StageFeatures(backbone.model, backbone.name, backbone.data_config.input_size).to(device)
    chosen = stage_features.resolve(stages or ["last"])
    writer = FeatureWriter(out, chosen, {"target": backbone.label, "weights_sha256": backbone.weights_sha256 or "random"}) \
        if out is not None else None
    kept: dict[str, list[torch.Tensor]] = {s: [] for s in chosen}
    labels: dict[str, list[torch.Tensor]] = {}
    names: list[str] = []
    started, seen = time.perf_counter(), 0
    bar = Progress(TextColumn("embed"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), console=console or Console(stderr=True), disable=not progress, transient=True)
    try:
        with bar:
            task = bar.add_task("embed", total=data.count, rate="")
            for images, batch_labels, batch_names in data.records():
                x = model_input(images.to(device), backbone.data_config.input_size, backbone.data_config.normalize)
                out_features = {s: f.cpu() for s, f in stage_features(x).items() if s in chosen}
                if writer is not None:
                    writer.add({s: f.numpy() for s, f in out_features.items()},
                               {h: y.numpy() for h, y in batch_labels.items()}, batch_names)
                else:
                    for s in chosen:
                        kept[s].append(out_features[s])
                    for head, y in batch_labels.items():
                        labels.setdefault(head, []).append(y)
                    names += batch_names
                seen += len(images)
                bar.update(task, advance=len(images), rate=f"{seen / (time.perf_counter() - started):.0f} img/s")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    rate = seen / max(time.perf_counter() - started, 1e-9)
    if writer is not None:
        return Embeddings({}, files=writer.close(), images_per_s=rate)
    if not seen:
        raise HiclError("data: no readable images")
    return Embeddings({s: torch.cat(c) for s, c in kept.items()}, {h: torch.cat(y) for h, y in labels.items()}, names,
                      images_per_s=rate)
