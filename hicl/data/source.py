"""The interface of a data source, the split kinds it returns, and the one registry of sources.

A source module defines a config class (a `SourceConfig` with `source: Literal["name"]`) and a function
that opens a split, and registers both with `@register`. The manifest's `data` section is the
discriminated union of the registered configs; nothing else lists the sources.

A split is one of:

- `ArraySplit`: images already decoded in memory (synthetic, IDX, CIFAR, STL-10), all of one size;
- `FileSplit`: one encoded file per image (image folders), decoded by loader workers;
- `StreamSplit`: records read in order from shards (WebDataset tars), decoded by loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal


from hicl.data.base import SourceConfig
from hicl.lazy import lazy_import
from hicl.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")  # loaded at first use: the manifest imports this module

# pretrain: what pretraining reads (may include unlabeled images); train, test: the labeled splits
# that evaluation fits and scores on.
Split = Literal["pretrain", "train", "test"]


@dataclass(frozen=True, eq=False)
class ArraySplit:
    images: Tensor  # uint8 [N, 3, H, W]
    labels: dict[str, Tensor]
    num_classes: dict[str, int]
    files: list[Path]  # the files it was read from (for the fingerprint)


@dataclass(frozen=True, eq=False)
class FileSplit:
    paths: list[Path]
    labels: dict[str, Tensor]  # head -> int64 [N]; empty for unlabeled folders
    num_classes: dict[str, int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True, eq=False)
class StreamSplit:
    shards: list[Path]
    length: int  # records over all shards (after max_images)
    num_classes: dict[str, int]
    read: Callable[[list[Path]], Iterator[tuple[str, bytes, dict[str, int]]]]  # shards -> (name, bytes, labels)

    def __len__(self) -> int:
        return self.length


SplitData = ArraySplit | FileSplit | StreamSplit
Opener = Callable[[SourceConfig, Split], SplitData]


@dataclass(frozen=True)
class SourceEntry:
    config: type[SourceConfig]
    open: Opener


SOURCES: Registry[SourceEntry] = Registry("data source")


def register(config: type[SourceConfig]) -> Callable[[Opener], Opener]:
    """Register `config` (whose `source` field names it) and the function that opens its splits."""
    name = config.model_fields["source"].default

    def decorate(open_split: Opener) -> Opener:
        SOURCES.register(name, SourceEntry(config, open_split))
        return open_split

    return decorate


def subset(count: int, max_images: int | None) -> Tensor:
    """Indices of the images a split keeps: all, or `max_images` of them in a fixed spread-out order.

    A fixed permutation (seed 0, independent of the manifest) rather than the first N files, so that a
    subset of a class-sorted folder still holds every class; the kept indices are returned sorted.
    """
    if max_images is None or max_images >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:max_images].sort().values
