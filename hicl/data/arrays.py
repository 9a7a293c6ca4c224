"""Sources stored as arrays of pixels: MNIST and Fashion-MNIST (IDX), CIFAR-10/100 and STL-10.

Each reads the files torchvision's dataset classes read, from `data.root` (or the folder torchvision
would put them in below it), and never downloads: missing files are an error that names them.

- `mnist`, `fashion_mnist`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-...`, gzipped or
  not. Fashion-MNIST's default root is Debian's `/usr/share/datasets/fashion-mnist`
  (`apt-get install dataset-fashion-mnist`) when it exists.
- `cifar10`, `cifar100`: the python version (`cifar-10-batches-py/data_batch_1..5`, `test_batch`;
  `cifar-100-python/train`, `test`). These files are pickles; they are read with an unpickler that only
  builds the lists, dicts, bytes and numpy arrays such a file holds, so a file that tries more is
  refused instead of run.
- `stl10`: `stl10_binary/{train,test,unlabeled}_X.bin` and `{train,test}_y.bin`; `train_split:
  unlabeled` pretrains on the 100,000 unlabeled images (`train+unlabeled` on both); evaluation always
  fits on the labeled `train` split.

Grey images become three channels. Every image is resized to `data.image_size` when that differs from
the native size (28, 32 or 96 px).
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from hicl.data.base import SourceConfig, missing_files_error
from hicl.data.source import ArraySplit, Split, register, subset
from hicl.errors import HiclError
from hicl.lazy import lazy_import

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")  # loaded at first use: the manifest imports this module

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _pick(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _grey_to_rgb(images: Tensor) -> Tensor:
    return images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _finish(cfg: SourceConfig, images: Tensor, labels: Tensor, classes: int, files: list[Path]) -> ArraySplit:
    """Subset (max_images), resize to image_size, and wrap as a split with one `class` head."""
    from hicl.data.base import resize

    keep = subset(len(images), cfg.max_images)
    images, labels = images[keep], labels[keep].long()
    if images.shape[-1] != cfg.image_size:
        images = torch.stack([resize(image, cfg.image_size, cfg.image_size) for image in images])
    return ArraySplit(images, {"class": labels}, {"class": classes}, files)


# ----------------------------------------------------------------------------------------------- IDX
IDX_UNSIGNED_BYTE = 0x08  # the only IDX type code MNIST-style image and label files use


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut download ends early: EOFError
        reason = "it ends before its end marker" if isinstance(exc, EOFError) else str(exc)
        raise HiclError(f"{path}: not a complete gzip file ({reason}); download or copy it again") from None


def read_idx(path: Path) -> Tensor:
    """An IDX file (MNIST's format; gzipped when the name ends in .gz) as a uint8 tensor of its shape."""
    raw = _gunzip(path) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UNSIGNED_BYTE:
        raise HiclError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(shape)):
        raise HiclError(f"{path}: IDX header says {shape} but the file holds {len(raw) - header} values")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).view(*shape)


class IdxSource(SourceConfig):
    image_size: int = Field(28, ge=8, le=1024, description="native 28 px; resized when different")
    root: Path | None = Field(None, description="folder with the IDX files (default: see docs/data.md)")


class MnistSource(IdxSource):
    """MNIST digits from IDX files."""

    source: Literal["mnist"] = "mnist"


class FashionMnistSource(IdxSource):
    """Fashion-MNIST from IDX files."""

    source: Literal["fashion_mnist"] = "fashion_mnist"


def _open_idx(cfg: IdxSource, split: Split, torchvision_name: str, default_root: Path | None) -> ArraySplit:
    root = cfg.root or default_root
    if root is None:
        raise HiclError(f"data.root: {cfg.source} needs data.root (the folder with its IDX files)")
    prefix = "t10k" if split == "test" else "train"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    found = []
    for stem in stems:
        folders = [root, root / torchvision_name / "raw", root / "raw"]
        path = _pick([folder / f"{stem}{ext}" for folder in folders for ext in ("", ".gz")])
        if path is None:
            raise HiclError(missing_files_error(cfg.source, root, [f"{s}[.gz]" for s in stems]))
        found.append(path)
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise HiclError(f"{found[0]}: expected N x H x W images and N labels")
    return _finish(cfg, _grey_to_rgb(images), labels, 10, found)


@register(MnistSource)
def open_mnist(cfg: MnistSource, split: Split) -> ArraySplit:
    return _open_idx(cfg, split, "MNIST", None)


@register(FashionMnistSource)
def open_fashion_mnist(cfg: FashionMnistSource, split: Split) -> ArraySplit:
    default = DEBIAN_FASHION_MNIST if DEBIAN_FASHION_MNIST.is_dir() else None
    return _open_idx(cfg, split, "FashionMNIST", default)


# --------------------------------------------------------------------------------------------- CIFAR
class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what CIFAR's python files contain: containers, bytes and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise HiclError(f"{path}: not a CIFAR batch file ({exc})") from None
    if not isinstance(batch, dict) or "data" not in batch:
        raise HiclError(f"{path}: not a CIFAR batch file (no 'data' entry)")
    return batch


class CifarSource(SourceConfig):
    root: Path = Field(description="the folder holding cifar-10-batches-py/ or cifar-100-python/")
    download: Literal[False] = Field(False, description="hicl never downloads; fetch the files yourself")


class Cifar10Source(CifarSource):
    """CIFAR-10 (python version)."""

    source: Literal["cifar10"] = "cifar10"


class Cifar100Source(CifarSource):
    """CIFAR-100 (python version, fine labels)."""

    source: Literal["cifar100"] = "cifar100"


def _open_cifar(cfg: CifarSource, folder: str, files: list[str], label_key: str, classes: int) -> ArraySplit:
    paths = [cfg.root / folder / name for name in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise HiclError(missing_files_error(cfg.source, cfg.root / folder, files))
    batches = [read_cifar_batch(p) for p in paths]
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except (KeyError, ValueError) as exc:
        raise HiclError(f"{paths[0]}: not a CIFAR batch file ({exc.__class__.__name__}: {exc})") from None
    return _finish(cfg, torch.from_numpy(data), torch.from_numpy(labels), classes, paths)


@register(Cifar10Source)
def open_cifar10(cfg: Cifar10Source, split: Split) -> ArraySplit:
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    return _open_cifar(cfg, "cifar-10-batches-py", files, "labels", 10)


@register(Cifar100Source)
def open_cifar100(cfg: Cifar100Source, split: Split) -> ArraySplit:
    return _open_cifar(cfg, "cifar-100-python", ["test" if split == "test" else "train"], "fine_labels", 100)


# -------------------------------------------------------------------------------------------- STL-10
class Stl10Source(SourceConfig):
    """STL-10's binary files (96 px; labeled train/test and 100k unlabeled)."""

    source: Literal["stl10"] = "stl10"
    root: Path = Field(description="the folder holding stl10_binary/")
    image_size: int = Field(96, ge=8, le=1024, description="native 96 px; resized when different")
    train_split: Literal["train", "unlabeled", "train+unlabeled"] = "train"
    download: Literal[False] = Field(False, description="hicl never downloads; fetch the files yourself")


def _read_stl_images(path: Path) -> Tensor:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise HiclError(f"{path}: size is not a multiple of one 3x96x96 image")
    # stored column-major per channel, as torchvision's STL10 transposes
    return torch.from_numpy(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())


@register(Stl10Source)
def open_stl10(cfg: Stl10Source, split: Split) -> ArraySplit:
    folder = cfg.root / "stl10_binary"
    parts = {"pretrain": cfg.train_split.split("+"), "train": ["train"], "test": ["test"]}[split]
    expected = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    if any(not (folder / name).is_file() for name in expected):
        raise HiclError(missing_files_error("stl10", folder, expected))
    images, labels = [], []
    for part in parts:
        x = _read_stl_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            y = torch.full((len(x),), -1, dtype=torch.int64)  # no class: pretraining only
        else:
            y = torch.from_numpy(np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64)) - 1
        if len(y) != len(x):
            raise HiclError(f"{folder / f'{part}_y.bin'}: {len(y)} labels for {len(x)} images")
        images.append(x)
        labels.append(y)
    files = [folder / name for name in expected]
    return _finish(cfg, torch.cat(images), torch.cat(labels), 10, files)
