"""Feeding a split to the device: uint8 batches with each image's true size, resident or streamed.

Training (`TrainData`): every epoch draws a permutation of the split from the loop's order generator
and cuts it into global batches of `optim.batch_size`; under torchrun each rank takes its contiguous
share of every global batch. How the images get there is chosen once:

- *resident*: the decoded split is held in one uint8 tensor on the training device (array sources such
  as synthetic, MNIST, CIFAR, STL-10 always; an image folder when `data.resident` is `always`, or `auto`
  and the decoded split fits in `RESIDENT_BYTES`), and a batch is an index into it;
- *streamed*: `data.workers` DataLoader processes decode and fit each file of the batch (nothing else:
  every augmentation runs batched on the device) into pinned memory, and the batch is copied to the
  device without blocking. WebDataset shards are always streamed, each worker reading its own shards.

Unusable files are skipped and counted (`data.on_bad_image: skip`) or stop the run naming the file
(`fail`); a resident split skips them once, before training, a streamed one as it meets them.

Evaluation (`eval_batches`, `load_split`) reads a split in file order with the centre-crop transform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from hicl.data.base import (
    BadImage,
    ImageSet,
    SkippedImages,
    SourceConfig,
    center_crop,
    decode,
    fit_to_square,
    read_bytes,
)
from hicl.data.source import SOURCES, ArraySplit, FileSplit, Split, SplitData, StreamSplit
from hicl.errors import HiclError

RESIDENT_BYTES = 2 * 1024**3
Fit = Callable[[Tensor], tuple[Tensor, tuple[int, int]]]


@dataclass
class Batch:
    images: Tensor  # uint8 [B, 3, S, S]
    # int64 [B, 2] true (height, width) at the top-left, on the CPU where the augmentation parameters are
    # drawn (no device sync per step); None when every image fills S x S
    sizes: Tensor | None
    indices: Tensor  # int64 [B]: positions in the split (files) or in this reader's stream (shards)
    labels: Tensor  # int64 [B]: class labels, -1 where the split has none
    skipped: list[tuple[str, str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # each kept image's file or record name

    def pin_memory(self) -> Batch:
        """The DataLoader's pinning thread calls this: page-locked images copy to the GPU without blocking."""
        return replace(self, images=self.images.pin_memory())


def open_split(cfg: SourceConfig, split: Split) -> SplitData:
    """The split as its source module opens it (files listed or arrays read, nothing decoded yet)."""
    return SOURCES[cfg.source].open(cfg, split)


# ------------------------------------------------------------------------------------ worker side
Item = tuple[int, Tensor | None, tuple[int, int], str, str | None, int]  # index, image, hw, name, error, label


def _decoded(
    name: str, read: Callable[[], bytes], fit: Fit, max_pixels: int
) -> tuple[Tensor | None, tuple[int, int], str | None]:
    try:
        image, hw = fit(decode(read(), name, max_pixels))
        return image, hw, None
    except BadImage as exc:
        return None, (0, 0), str(exc)


class _Files(Dataset):
    """Item i: the i-th file decoded and fitted (or the reason it could not be)."""

    def __init__(self, split: FileSplit, fit: Fit, max_pixels: int):
        self.paths, self.fit, self.max_pixels = split.paths, fit, max_pixels
        self.labels = split.labels.get("class")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        image, hw, error = _decoded(str(path), lambda: read_bytes(path), self.fit, self.max_pixels)
        label = -1 if self.labels is None else int(self.labels[index])
        return index, image, hw, str(path), error, label


class _Shards(IterableDataset):
    """Every record of this rank's and this worker's shards, decoded and fitted, in shard order."""

    def __init__(self, split: StreamSplit, fit: Fit, max_pixels: int, shard_order: list[int], rank: int, world: int):
        self.split, self.fit, self.max_pixels = split, fit, max_pixels
        self.shard_order, self.rank, self.world = shard_order, rank, world

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers, reader = self.world * workers, self.rank * workers + worker
        shards = [self.split.shards[i] for i in self.shard_order[reader::readers]]
        for position, (name, data, labels) in enumerate(self.split.read(shards)):
            image, hw, error = _decoded(name, lambda d=data: d, self.fit, self.max_pixels)
            yield position, image, hw, name, error, labels.get("class", -1)


def _collate(items: list[Item]) -> Batch:
    kept = [item for item in items if item[1] is not None]
    skipped = [(item[3], item[4]) for item in items if item[1] is None]
    if not kept:
        empty = torch.zeros(0, dtype=torch.int64)
        return Batch(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), empty.view(0, 2), empty, empty, skipped)
    return Batch(
        images=torch.stack([item[1] for item in kept]),
        sizes=torch.tensor([item[2] for item in kept], dtype=torch.int64),
        indices=torch.tensor([item[0] for item in kept], dtype=torch.int64),
        labels=torch.tensor([item[5] for item in kept], dtype=torch.int64),
        skipped=skipped,
        names=[item[3] for item in kept],
    )


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one image at a time; more threads only contend


def _loader(dataset: Dataset, workers: int, pin: bool, **kwargs: Any) -> DataLoader:
    return DataLoader(
        dataset, num_workers=workers, collate_fn=_collate, pin_memory=pin, worker_init_fn=_one_thread,
        prefetch_factor=4 if workers else None, **kwargs,
    )


# ---------------------------------------------------------------------------------------- training
class TrainData:
    """The training split as the loop consumes it (see the module docstring)."""

    def __init__(self, cfg: SourceConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.skipped = SkippedImages()
        self.split = open_split(cfg, "pretrain")
        self.fit: Fit = lambda image: fit_to_square(image, cfg.image_size)
        self.images: Tensor | None = None
        self.sizes: Tensor | None = None
        if isinstance(self.split, ArraySplit):
            self.images = self.split.images
        elif isinstance(self.split, FileSplit) and self._fits_in_memory(len(self.split)):
            self.images, self.sizes = self._decode_all(self.split)
        if self.images is not None:
            self.images = self.images.to(device)

    def _fits_in_memory(self, count: int) -> bool:
        if self.cfg.resident == "auto":
            return count * 3 * self.cfg.image_size**2 <= RESIDENT_BYTES
        return self.cfg.resident == "always"

    def _decode_all(self, split: FileSplit) -> tuple[Tensor, Tensor]:
        images, sizes = [], []
        loader = _loader(_Files(split, self.fit, self.cfg.max_pixels), self.cfg.workers, pin=False, batch_size=64)
        for batch in loader:
            self._note_skipped(batch.skipped)
            images.append(batch.images)
            sizes.append(batch.sizes)
        kept = [i for i in images if len(i)]
        if not kept:
            raise HiclError(f"data: none of the {len(split)} training images could be read")
        return torch.cat(kept), torch.cat([s for s in sizes if len(s)])

    def _note_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for name, reason in skipped:
            if self.cfg.on_bad_image == "fail":
                raise HiclError(f"data.on_bad_image: fail: {reason}")
            self.skipped.add(name, reason)

    @property
    def resident(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.split)

    def describe(self) -> str:
        """One line for the run's log: how many images, and how they reach the device."""
        if self.resident:
            megabytes = self.images.numel() / 2**20
            return f"{len(self):,} training images held on {self.device} ({megabytes:,.0f} MiB)"
        return f"{len(self):,} training images streamed by {self.cfg.workers} decoding workers"

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def epoch(self, order: torch.Generator, batch_size: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's batches of one epoch, from step `start_step` of it (on resume).

        The permutation is drawn from `order` whatever the split kind, so the generator's state after an
        epoch does not depend on how the data is held.
        """
        steps = self.steps_per_epoch(batch_size)
        permutation = torch.randperm(len(self), generator=order)
        share = batch_size // self.world
        global_batches = permutation[: steps * batch_size].view(steps, batch_size)
        rank_batches = global_batches[:, self.rank * share : (self.rank + 1) * share]
        if self.resident:
            for index in rank_batches[start_step:]:
                on_device = index.to(self.device)
                sizes = None if self.sizes is None else self.sizes[index]
                yield Batch(self.images[on_device], sizes, index, torch.full_like(index, -1))
            return
        pin = self.device.type == "cuda"
        if isinstance(self.split, StreamSplit):
            shard_order = torch.randperm(len(self.split.shards), generator=order).tolist()
            dataset = _Shards(self.split, self.fit, self.cfg.max_pixels, shard_order, self.rank, self.world)
            loader = _loader(dataset, self.cfg.workers, pin, batch_size=share)
            batches = (b for i, b in enumerate(loader) if i >= start_step)
        else:
            sampler = [index.tolist() for index in rank_batches[start_step:]]
            files = _Files(self.split, self.fit, self.cfg.max_pixels)
            batches = iter(_loader(files, self.cfg.workers, pin, batch_sampler=sampler))
        for _, batch in zip(range(steps - start_step), batches):
            self._note_skipped(batch.skipped)
            if not len(batch.images):
                raise HiclError(f"data: every image of a training batch was unreadable ({batch.skipped[0][1]})")
            yield Batch(batch.images.to(self.device, non_blocking=pin),
                        batch.sizes, batch.indices, batch.labels, batch.skipped)


# -------------------------------------------------------------------------------------- evaluation
def eval_batches(
    cfg: SourceConfig, split: Split, view_size: int, batch_size: int = 256, data: SplitData | None = None
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """(uint8 [B, 3, view, view] centre-cropped images, labels per head) over the whole split, in order.

    Unreadable files are skipped (and counted nowhere: evaluation reports its image count instead).
    """
    for images, labels, _ in eval_records(cfg, split, view_size, batch_size, data):
        yield images, labels


def eval_records(
    cfg: SourceConfig, split: Split, view_size: int, batch_size: int = 256, data: SplitData | None = None
) -> Iterator[tuple[Tensor, dict[str, Tensor], list[str]]]:
    """`eval_batches` with each image's name: its file, its shard record, or `split[i]` in an array split."""
    data = data if data is not None else open_split(cfg, split)

    def crop(image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        return center_crop(image, view_size, cfg.crop_pct), (view_size, view_size)

    if isinstance(data, ArraySplit):
        for start in range(0, len(data.images), batch_size):
            chunk = data.images[start : start + batch_size]
            if chunk.shape[-1] != view_size:
                chunk = torch.stack([crop(image)[0] for image in chunk])
            names = [f"{split}[{i}]" for i in range(start, start + len(chunk))]
            yield chunk, {h: y[start : start + batch_size] for h, y in data.labels.items()}, names
        return
    if isinstance(data, FileSplit):
        loader = _loader(_Files(data, crop, cfg.max_pixels), cfg.workers, pin=False, batch_size=batch_size)
        for batch in loader:
            if len(batch.images):
                yield batch.images, {"class": batch.labels} if data.num_classes else {}, batch.names
        return
    loader = _loader(_Shards(data, crop, cfg.max_pixels, list(range(len(data.shards))), 0, 1), cfg.workers, pin=False,
                     batch_size=batch_size)
    left = len(data)  # max_images
    for batch in loader:
        images, labels, names = batch.images[:left], batch.labels[:left], batch.names[:left]
        left -= len(images)
        if len(images):
            yield images, {"class": labels} if data.num_classes else {}, names
        if left <= 0:
            return


def available_memory() -> int | None:
    """Bytes available for new allocations (Linux's MemAvailable: free memory plus reclaimable page
    cache, which reading a dataset fills), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits_in_memory(split: Split, count: int, size: int) -> None:
    """A one-line error, before decoding starts, when a split's decoded images would not fit in memory."""
    need, free = count * 3 * size * size, available_memory()
    if free is not None and need > 0.8 * free:
        raise HiclError(
            f"data: the {split} split ({count:,} images at {size} px) needs {need / 2**30:.1f} GiB in memory for "
            f"evaluation and {free / 2**30:.1f} GiB are free; evaluate a subset with --set data.max_images=N"
        )


def load_split(cfg: SourceConfig, split: Split, view_size: int | None = None) -> ImageSet:
    """A whole split decoded in memory with the evaluation transform (at `data.image_size` by default).

    For the splits that evaluation and the invariance probe read; training streams with `TrainData`.
    """
    data = open_split(cfg, split)
    size = view_size or cfg.image_size
    if isinstance(data, ArraySplit) and data.images.shape[-1] == size:
        return ImageSet(data.images, data.labels, data.num_classes)
    if not isinstance(data, ArraySplit):
        check_fits_in_memory(split, len(data), size)
    images: list[Tensor] = []
    labels: dict[str, list[Tensor]] = {}
    for chunk, chunk_labels in eval_batches(cfg, split, size, data=data):
        images.append(chunk)
        for head, y in chunk_labels.items():
            labels.setdefault(head, []).append(y)
    if not images:
        raise HiclError(f"data: no readable images in the {split} split")
    return ImageSet(torch.cat(images), {h: torch.cat(y) for h, y in labels.items()}, dict(data.num_classes))
