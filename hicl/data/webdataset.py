"""`source: webdataset`: tar shards in the WebDataset layout, for sets too large for a folder tree.

Each sample is the files of one key in a shard: an image (`{key}.jpg`, `.jpeg`, `.png` or `.webp`) and,
for labeled sets, its class (`{key}.cls`, a decimal integer). Shards are given as a brace pattern or a
glob per split (`train_shards: /data/in100/train-{000000..000099}.tar`). Reading uses the `webdataset`
library (`pip install 'hicl[webdataset]'`); loader workers (and, under torchrun, ranks) each take their
own shards, so every record is read once per epoch. The records of all shards are counted once when the
split is opened (tar headers only), which fixes the number of steps per epoch.
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from hicl.data.base import SourceConfig
from hicl.data.source import Split, StreamSplit, register
from hicl.errors import HiclError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


class WebDatasetSource(SourceConfig):
    """WebDataset tar shards (`{key}.jpg` + `{key}.cls`)."""

    source: Literal["webdataset"] = "webdataset"
    train_shards: str = Field(description="brace pattern or glob of the training shards")
    test_shards: str | None = Field(None, description="brace pattern or glob of the evaluation shards")
    image_size: int = Field(256, ge=8, le=1024, description="longer side after resizing (padded to a square)")
    num_classes: int | None = Field(None, gt=0, description="classes of the .cls labels; none: unlabeled")


def expand_shards(pattern: str) -> list[Path]:
    from braceexpand import braceexpand

    paths: set[Path] = set()
    for expanded in braceexpand(pattern):
        matches = glob.glob(expanded)
        if not matches and not glob.has_magic(expanded):
            # a brace pattern names each shard: one that is absent would be silently dropped from training
            raise HiclError(f"{pattern}: shard {expanded} does not exist")
        paths.update(Path(p) for p in matches)
    return sorted(paths)


def _count_records(shard: Path) -> int:
    try:
        with tarfile.open(shard) as tar:
            keys = {m.name.rsplit(".", 1)[0] for m in tar if m.isfile() and m.name.rsplit(".", 1)[-1] in IMAGE_SUFFIXES}
    except (tarfile.TarError, OSError) as exc:
        raise HiclError(f"data: {shard} is not a readable tar shard ({exc})") from None
    return len(keys)


def read_shards(shards: list[Path], labeled: bool) -> Iterator[tuple[str, bytes, dict[str, int]]]:
    """(name, image bytes, labels) for every record of `shards`, in shard order."""
    import webdataset as wds

    if not shards:  # more readers than shards: this one has none
        return
    # hicl hands each worker and rank its own shards, so the library must not split them again
    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False,
                             nodesplitter=None, workersplitter=None)
    for sample in dataset:
        image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
        name = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        labels = {"class": int(sample["cls"])} if labeled and "cls" in sample else {}
        yield name, image if image is not None else b"", labels


@register(WebDatasetSource)
def open_webdataset(cfg: WebDatasetSource, split: Split) -> StreamSplit:
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise HiclError("data.source: webdataset needs the webdataset package: pip install 'hicl[webdataset]'") from None
    pattern = cfg.test_shards if split == "test" else cfg.train_shards
    field = "data.test_shards" if split == "test" else "data.train_shards"
    if pattern is None:
        raise HiclError("data.test_shards: evaluation needs the shards of a labeled split")
    shards = expand_shards(pattern)
    if not shards:
        raise HiclError(f"{field}: no shard matches {pattern!r}")
    if split != "pretrain" and cfg.num_classes is None:
        raise HiclError("data.num_classes: evaluation needs labeled shards and their number of classes")
    total = sum(_count_records(s) for s in shards)
    if total == 0:
        raise HiclError(f"{field}: the shards of {pattern!r} hold no images")
    length = total if cfg.max_images is None else min(total, cfg.max_images)
    labeled = cfg.num_classes is not None
    return StreamSplit(
        shards, length, {"class": cfg.num_classes} if labeled else {},
        read=lambda chosen: read_shards(chosen, labeled),
    )
