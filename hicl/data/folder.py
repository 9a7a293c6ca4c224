"""`source: folder`: images on disk, in the ImageFolder layout or as one unlabeled tree.

Labeled (`labeled: true`, the default)::

    root/train/CLASS_A/xxx.jpg      root/val/CLASS_A/yyy.png   (or root/test/...)
    root/train/CLASS_B/...          root/val/CLASS_B/...

Classes are the sub-folders of the training split, sorted by name (torchvision's `ImageFolder` rule);
the evaluation split must have the same classes. Unlabeled (`labeled: false`): every image file under
`root/train_split` at any depth, for pretraining only. Files are listed in sorted path order, so
`max_images` keeps the same images on every machine (see `subset`); within a class folder, any depth is searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from hicl.data.base import SourceConfig
from hicl.data.source import FileSplit, Split, register, subset
from hicl.errors import HiclError
from hicl.lazy import lazy_import

torch = lazy_import("torch")  # loaded at first use: the manifest imports this module

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class FolderSource(SourceConfig):
    """an image folder tree (ImageFolder layout with named splits, or unlabeled)."""

    source: Literal["folder"] = "folder"
    root: Path = Field(description="the folder holding the split folders")
    image_size: int = Field(256, ge=8, le=1024, description="longer side after resizing (padded to a square)")
    train_split: str = Field("train", description="sub-folder of root used for pretraining ('.' for root)")
    test_split: str | None = Field(None, description="sub-folder for evaluation; default 'val', else 'test'")
    labeled: bool = Field(True, description="class sub-folders (ImageFolder); false: any images at any depth")
    extensions: list[str] = Field(list(IMAGE_EXTENSIONS), description="file suffixes read, case-insensitive")


def _split_dir(cfg: FolderSource, split: Split) -> Path:
    if split != "test":
        path = cfg.root / cfg.train_split
        if not path.is_dir():
            raise HiclError(f"data.train_split: {path} is not a folder")
        return path
    names = [cfg.test_split] if cfg.test_split else ["val", "test"]
    for name in names:
        if (cfg.root / name).is_dir():
            return cfg.root / name
    raise HiclError(f"data.test_split: no evaluation split in {cfg.root} (expected a folder {' or '.join(names)})")


def _images_under(folder: Path, extensions: set[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())


@register(FolderSource)
def open_folder(cfg: FolderSource, split: Split) -> FileSplit:
    if not cfg.root.is_dir():
        raise HiclError(f"data.root: {cfg.root} is not a folder")
    folder = _split_dir(cfg, split)
    extensions = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.extensions}
    if not cfg.labeled:
        if split != "pretrain":
            raise HiclError("data.labeled: an unlabeled folder has no labels to evaluate with; use it for pretraining only")
        paths = _images_under(folder, extensions)
        if not paths:
            raise HiclError(f"data.root: no images ({', '.join(sorted(extensions))}) under {folder}")
        return FileSplit([paths[i] for i in subset(len(paths), cfg.max_images)], {}, {})
    classes = sorted(d.name for d in _split_dir(cfg, "train").iterdir() if d.is_dir())
    if not classes:
        raise HiclError(f"data.root: {_split_dir(cfg, 'train')} has no class folders (ImageFolder layout expected)")
    paths, labels = [], []
    for index, name in enumerate(classes):
        class_dir = folder / name
        found = _images_under(class_dir, extensions) if class_dir.is_dir() else []
        if not found:
            raise HiclError(f"data.root: class folder {class_dir} has no images")
        paths += found
        labels += [index] * len(found)
    extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise HiclError(f"data.root: {folder} has classes not in the training split: {', '.join(extra[:5])}")
    keep = subset(len(paths), cfg.max_images)
    return FileSplit([paths[i] for i in keep], {"class": torch.tensor(labels)[keep]}, {"class": len(classes)})
