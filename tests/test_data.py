"""Data sources, decoding, bad files and the loader, on tiny files written by the tests."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, encode_png

from hicl.data import SOURCES
from hicl.data.fingerprint import split_fingerprint
from hicl.data.loader import TrainData, load_split, open_split
from hicl.data.base import BadImage, center_crop, decode, fit_to_square
from hicl.errors import HiclError
from hicl.manifest import Manifest


def data_config(**data):
    return Manifest.model_validate({"name": "t", "data": data}).data


def random_image(generator: torch.Generator, height: int, width: int) -> torch.Tensor:
    return (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)


def write_folder(root: Path, splits: dict[str, int], classes=("a", "b", "c"), seed: int = 0) -> None:
    """ImageFolder tree; class k's images are dark in channel k, so a linear probe can tell them apart."""
    generator = torch.Generator().manual_seed(seed)
    for split, per_class in splits.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = random_image(generator, 24 + 2 * (i % 9), 40 - 2 * (i % 7))
                image[k % 3] //= 5
                (folder / f"{i:03d}.jpg").write_bytes(bytes(encode_jpeg(image, quality=95).numpy()))


def jpeg_bytes(image: torch.Tensor) -> bytes:
    return bytes(encode_jpeg(image, quality=95).numpy())


def bad_files() -> dict[str, bytes]:
    """One file of every kind of broken input."""
    generator = torch.Generator().manual_seed(1)
    full = jpeg_bytes(random_image(generator, 32, 32))
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tiny, "PNG")
    return {
        "truncated.jpg": full[: len(full) // 2],
        "text.jpg": b"this is a text file with a .jpg name\n",
        "empty.jpg": b"",
        "tiny.png": tiny.getvalue(),
    }


# -------------------------------------------------------------------------------------------- decode
def test_decode_converts_cmyk_grey_16bit_and_alpha_like_pillow():
    cases = {}
    buffer = io.BytesIO()
    Image.new("CMYK", (20, 30), (10, 200, 30, 40)).save(buffer, "JPEG", quality=95)
    cases["cmyk"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 16), 40000, dtype=np.uint16)).save(buffer, "PNG")
    cases["png16"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 9), (200, 100, 50, 7)).save(buffer, "PNG")
    cases["rgba"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("L", (11, 13), 77).save(buffer, "PNG")
    cases["grey"] = buffer.getvalue()
    expected = {"cmyk": None, "png16": (156, 156, 156), "rgba": (200, 100, 50), "grey": (77, 77, 77)}
    for name, data in cases.items():
        image = decode(data, name)
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        reference = expected[name] or Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
        assert tuple(image[:, 0, 0].tolist()) == pytest.approx(reference, abs=1), name


@pytest.mark.parametrize("name, data", list(bad_files().items()))
def test_decode_rejects_bad_files_with_their_name(name, data):
    with pytest.raises(BadImage, match=name):
        decode(data, name)


def test_fit_to_square_keeps_aspect_and_pads_bottom_right():
    image = torch.full((3, 30, 60), 200, dtype=torch.uint8)
    out, (h, w) = fit_to_square(image, 40)
    assert out.shape == (3, 40, 40) and (h, w) == (20, 40)
    assert (out[:, :20, :] == 200).all() and (out[:, 20:, :] == 0).all()


def test_center_crop_resizes_the_shorter_side_then_cuts_the_centre():
    image = torch.arange(3 * 64 * 96, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 64, 96)
    out = center_crop(image, 32, 0.5)  # shorter side -> 64 (unchanged), centre 32 x 32
    assert torch.equal(out, image[:, 16:48, 32:64])
    assert center_crop(image[:, :32, :32], 32, 0.875) is not None
    same = image[:, :32, :32].contiguous()
    assert torch.equal(center_crop(same, 32, 0.875), same)


# -------------------------------------------------------------------------------------------- folder
def test_folder_skips_and_counts_every_bad_file(tmp_path):
    write_folder(tmp_path, {"train": 4, "val": 2})
    for name, data in bad_files().items():
        (tmp_path / "train" / "b" / name).write_bytes(data)
    cfg = data_config(source="folder", root=str(tmp_path), image_size=32, workers=0, resident="never")
    train = TrainData(cfg, torch.device("cpu"))
    assert len(train) == 12 + 4
    seen = sum(len(b.images) for b in train.epoch(torch.Generator().manual_seed(0), 4))
    assert seen == 12 and len(train.skipped) == 4
    assert {Path(p).name for p in train.skipped.reasons} == set(bad_files())


def test_folder_resident_skips_before_training(tmp_path):
    write_folder(tmp_path, {"train": 4, "val": 2})
    (tmp_path / "train" / "a" / "empty.jpg").write_bytes(b"")
    cfg = data_config(source="folder", root=str(tmp_path), image_size=32, workers=0)
    train = TrainData(cfg, torch.device("cpu"))
    assert train.resident and len(train) == 12 and len(train.skipped) == 1
    batches = list(train.epoch(torch.Generator().manual_seed(0), 4))
    assert len(batches) == 3 and all(b.sizes.shape == (4, 2) for b in batches)
    assert (batches[0].sizes.amax(dim=1) == 32).all()  # longer side fitted to image_size


def test_folder_fail_names_the_file(tmp_path):
    write_folder(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "train" / "c" / "text.jpg").write_bytes(b"not an image")
    cfg = data_config(source="folder", root=str(tmp_path), workers=0, on_bad_image="fail")
    with pytest.raises(HiclError, match="text.jpg"):
        TrainData(cfg, torch.device("cpu"))


@pytest.mark.parametrize(
    "setup, split, field",
    [
        (lambda root: None, "train", "data.root"),  # no folder at all
        (lambda root: root.mkdir(), "train", "data.train_split"),
        (lambda root: (root / "train").mkdir(parents=True), "train", "class folders"),
        (lambda root: (root / "train" / "a").mkdir(parents=True), "train", "has no images"),
        (lambda root: write_folder(root, {"train": 1}), "test", "data.test_split"),
        (lambda root: (write_folder(root, {"train": 1, "val": 1}), (root / "val" / "zzz").mkdir()), "test",
         "not in the training"),
    ],
)
def test_folder_layout_errors_name_the_problem(tmp_path, setup, split, field):
    root = tmp_path / "data"
    setup(root)
    cfg = data_config(source="folder", root=str(root), workers=0)
    with pytest.raises(HiclError, match=field):
        open_split(cfg, split)


def test_unlabeled_folder_reads_any_depth_and_has_no_eval_split(tmp_path):
    generator = torch.Generator().manual_seed(0)
    for path in ("x/1.jpg", "x/y/2.jpg", "3.png", "notes.txt"):
        (tmp_path / "train" / path).parent.mkdir(parents=True, exist_ok=True)
        image = random_image(generator, 20, 20)
        data = jpeg_bytes(image) if path.endswith("jpg") else bytes(encode_png(image).numpy())
        (tmp_path / "train" / path).write_bytes(data if not path.endswith("txt") else b"hello")
    cfg = data_config(source="folder", root=str(tmp_path), labeled=False, workers=0)
    assert len(open_split(cfg, "pretrain")) == 3
    for split in ("train", "test"):
        with pytest.raises(HiclError, match="unlabeled"):
            open_split(cfg, split)


def test_max_images_keeps_a_fixed_subset_with_every_class(tmp_path):
    write_folder(tmp_path, {"train": 10, "val": 2})
    cfg = data_config(source="folder", root=str(tmp_path), max_images=9, workers=0)
    first, second = open_split(cfg, "train"), open_split(cfg, "train")
    assert len(first) == 9 and first.paths == second.paths
    assert set(first.labels["class"].tolist()) == {0, 1, 2}


def test_folder_eval_split_is_centre_cropped_with_labels(tmp_path):
    write_folder(tmp_path, {"train": 2, "val": 3})
    cfg = data_config(source="folder", root=str(tmp_path), workers=0)
    test = load_split(cfg, "test", view_size=16)
    assert test.images.shape == (9, 3, 16, 16)
    assert test.labels["class"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.num_classes == {"class": 3}


def test_an_eval_split_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    import hicl.data.loader as loader

    write_folder(tmp_path, {"train": 2, "val": 3})
    cfg = data_config(source="folder", root=str(tmp_path), workers=0)
    need = 9 * 3 * 16 * 16  # 9 test images decoded at 16 px, uint8
    monkeypatch.setattr(loader, "available_memory", lambda: need)  # 80 % of it is usable: too little
    with pytest.raises(HiclError, match=r"test split \(9 images at 16 px\).*data.max_images"):
        load_split(cfg, "test", view_size=16)
    monkeypatch.setattr(loader, "available_memory", lambda: 2 * need)
    assert load_split(cfg, "test", view_size=16).images.shape == (9, 3, 16, 16)


def test_streamed_and_resident_folders_give_the_same_batches(tmp_path):
    write_folder(tmp_path, {"train": 4, "val": 1})
    common = dict(source="folder", root=str(tmp_path), image_size=32)
    streamed = TrainData(data_config(**common, resident="never", workers=2), torch.device("cpu"))
    resident = TrainData(data_config(**common, resident="always", workers=0), torch.device("cpu"))
    for a, b in zip(streamed.epoch(torch.Generator().manual_seed(3), 4, start_step=1),
                    resident.epoch(torch.Generator().manual_seed(3), 4, start_step=1)):
        assert torch.equal(a.images, b.images) and torch.equal(a.sizes, b.sizes)


def test_fingerprint_changes_with_content(tmp_path):
    write_folder(tmp_path, {"train": 2, "val": 1})
    cfg = data_config(source="folder", root=str(tmp_path), workers=0)
    before = split_fingerprint(open_split(cfg, "train"))
    assert before["files"] == 6 and before["bytes"] > 0
    path = tmp_path / "train" / "a" / "000.jpg"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert split_fingerprint(open_split(cfg, "train"))["sample_sha256"] != before["sample_sha256"]


# ----------------------------------------------------------------------------------------------- IDX
def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gzipped else raw)


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_sources_read_plain_and_gzipped_files(tmp_path, gzipped):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gzipped else ""
    images = rng.integers(0, 256, (7, 28, 28))
    labels = rng.integers(0, 10, 7)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gzipped)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gzipped)
    cfg = data_config(source="mnist", root=str(tmp_path))
    split = load_split(cfg, "test")
    assert split.images.shape == (7, 3, 28, 28)
    assert torch.equal(split.images[:, 1], torch.from_numpy(images).to(torch.uint8))
    assert split.labels["class"].tolist() == labels.tolist()
    resized = load_split(data_config(source="mnist", root=str(tmp_path), image_size=32), "test")
    assert resized.images.shape == (7, 3, 32, 32)


def test_idx_header_that_lies_is_an_error(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), False)
    data = bytearray((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes(data[:-5]))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), False)
    with pytest.raises(HiclError, match="IDX header"):
        open_split(data_config(source="fashion_mnist", root=str(tmp_path)), "test")


# --------------------------------------------------------------------------------------- CIFAR, STL
def write_cifar(root: Path, name: str, count: int, label_key: str = "labels") -> np.ndarray:
    data = np.random.default_rng(len(name)).integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
    batch = {"batch_label": "test", label_key: list(range(count)), "data": data, "filenames": []}
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return data


def test_cifar10_reads_the_python_batches(tmp_path):
    data = write_cifar(tmp_path, "cifar-10-batches-py/test_batch", 5)
    split = load_split(data_config(source="cifar10", root=str(tmp_path)), "test")
    assert torch.equal(split.images, torch.from_numpy(data).view(5, 3, 32, 32))
    assert split.labels["class"].tolist() == [0, 1, 2, 3, 4]


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(HiclError, match="refusing"):
        open_split(data_config(source="cifar100", root=str(tmp_path)), "test")


def test_stl10_reads_binary_files_column_major(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    images.transpose(0, 1, 3, 2).tofile(folder / "test_X.bin")  # how STL-10 stores them
    np.array([1, 10], dtype=np.uint8).tofile(folder / "test_y.bin")
    split = load_split(data_config(source="stl10", root=str(tmp_path)), "test")
    assert torch.equal(split.images, torch.from_numpy(images))
    assert split.labels["class"].tolist() == [0, 9]


@pytest.mark.parametrize("source", sorted(set(SOURCES) - {"synthetic", "folder", "webdataset"}))
def test_missing_files_name_what_was_expected(tmp_path, source):
    with pytest.raises(HiclError, match="not found|expected"):
        open_split(data_config(source=source, root=str(tmp_path)), "train")


# --------------------------------------------------------------------------------------- WebDataset
def write_shard(path: Path, count: int, start: int, bad: bool = False) -> None:
    generator = torch.Generator().manual_seed(start)
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + count):
            for suffix, data in (("jpg", jpeg_bytes(random_image(generator, 20, 30))), ("cls", str(i % 2).encode())):
                if bad and i == start and suffix == "jpg":
                    data = b"broken"
                info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_stream_every_record_once(tmp_path):
    pytest.importorskip("webdataset")
    for k in range(3):
        write_shard(tmp_path / f"train-{k:04d}.tar", 4, 4 * k, bad=k == 1)
    write_shard(tmp_path / "test-0000.tar", 3, 100)
    cfg = data_config(source="webdataset", train_shards=str(tmp_path / "train-{0000..0002}.tar"),
                      test_shards=str(tmp_path / "test-*.tar"), num_classes=2, image_size=32, workers=2)
    train = TrainData(cfg, torch.device("cpu"))
    assert len(train) == 12 and not train.resident
    batches = list(train.epoch(torch.Generator().manual_seed(0), 2))
    assert sum(len(b.images) for b in batches) == 11 and len(train.skipped) == 1
    test = load_split(cfg, "test", view_size=16)
    assert test.images.shape == (3, 3, 16, 16) and test.labels["class"].tolist() == [0, 1, 0]


def test_webdataset_without_matching_shards_is_an_error(tmp_path):
    pytest.importorskip("webdataset")
    cfg = data_config(source="webdataset", train_shards=str(tmp_path / "none-*.tar"))
    with pytest.raises(HiclError, match="no shard"):
        open_split(cfg, "train")


# ----------------------------------------------------------------------------------------- manifest
def test_unknown_source_is_a_one_line_error():
    with pytest.raises(Exception, match="unknown data source"):
        data_config(source="imagenet")


def test_a_data_section_without_source_is_synthetic():
    assert data_config(image_size=32).source == "synthetic"


# ---------------------------------------------------------------------------- crops on true image sizes
def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    values = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, values, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, values, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def test_crops_on_a_padded_non_square_image_follow_torchvision():
    from torchvision.transforms import RandomResizedCrop

    from hicl.augment.ops import sample_crop
    from hicl.manifest import CropConfig

    height, width, count = 60, 150, 20_000
    cfg = CropConfig(scale=(0.08, 1.0))
    sizes = torch.tensor([[height, width]]).repeat(count, 1)
    ours = sample_crop(count, sizes, cfg, torch.Generator().manual_seed(0)).double()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, cfg.scale, cfg.ratio) for _ in range(count)]).double()
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for ours_stat, theirs_stat in ((h * w, theirs[:, 2] * theirs[:, 3]), (w / h, theirs[:, 3] / theirs[:, 2]),
                                   (left + w / 2, theirs[:, 1] + theirs[:, 3] / 2),
                                   (top + h / 2, theirs[:, 0] + theirs[:, 2] / 2)):
        assert ks_distance(ours_stat, theirs_stat) < 0.025
    # every pixel of the true image is covered by some crop, with torchvision's per-column frequency
    columns = torch.arange(width).double()
    covered = ((left[:, None] <= columns) & (columns < (left + w)[:, None])).double().mean(0)
    reference = ((theirs[:, 1:2] <= columns) & (columns < (theirs[:, 1] + theirs[:, 3])[:, None])).double().mean(0)
    assert (covered > 0).all() and (covered - reference).abs().max() < 0.02


def test_crops_of_mixed_sizes_stay_inside_each_true_image():
    from hicl.augment.ops import sample_crop
    from hicl.manifest import CropConfig

    generator = torch.Generator().manual_seed(1)
    sizes = torch.stack([torch.randint(8, 64, (4096,), generator=generator) for _ in range(2)], dim=1)
    boxes = sample_crop(4096, sizes, CropConfig(), generator)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= sizes[:, 0]).all() and (boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]).all()


def test_webdataset_brace_pattern_naming_a_missing_shard_is_an_error(tmp_path):
    pytest.importorskip("webdataset")
    for k in (0, 2):  # 0001 is absent
        write_shard(tmp_path / f"train-{k:06d}.tar", 2, 2 * k)
    cfg = data_config(source="webdataset", train_shards=str(tmp_path / "train-{000000..000002}.tar"), num_classes=2)
    with pytest.raises(HiclError, match=r"shard .*train-000001\.tar does not exist"):
        open_split(cfg, "train")


# ------------------------------------------------------------------------- hostile PNGs, pixel limit
def png_bytes(width: int, height: int, pixel_bytes: bytes) -> bytes:
    """A PNG (8-bit RGB) of the given header size whose IDAT holds `pixel_bytes`, compressed, correct CRCs."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixel_bytes)) + chunk(b"IEND", b"")


def test_the_png_writer_makes_a_png_that_decodes() -> None:
    from hicl.data.base import decode

    rows = b"".join(b"\x00" + bytes(range(30)) for _ in range(12))  # filter byte + 10 RGB pixels per row
    image = decode(png_bytes(10, 12, rows), "ok.png")
    assert image.shape == (3, 12, 10) and image[:, 0, 1].tolist() == [3, 4, 5]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_png_with_short_pixel_data_is_skipped_or_named(tmp_path, workers):
    write_folder(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "train" / "a" / "short.png").write_bytes(png_bytes(100, 100, b"\x00" * 50))
    common = {"source": "folder", "root": str(tmp_path), "image_size": 32, "workers": workers, "resident": "never"}
    train = TrainData(data_config(**common), torch.device("cpu"))
    seen = sum(len(b.images) for b in train.epoch(torch.Generator().manual_seed(0), 7))  # one batch of all 7
    assert seen == 6 and [Path(p).name for p in train.skipped.reasons] == ["short.png"]
    failing = TrainData(data_config(**common, on_bad_image="fail"), torch.device("cpu"))
    with pytest.raises(HiclError, match="short.png"):
        list(failing.epoch(torch.Generator().manual_seed(0), 7))


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    from hicl.data.base import MAX_PIXELS, BadImage, decode

    huge = png_bytes(20_000, 20_000, b"\x00" * 10)  # a few bytes on disk, 400 megapixels by its header
    with pytest.raises(BadImage, match=rf"20000x20000 px is more than data.max_pixels \({MAX_PIXELS}\)"):
        decode(huge, "huge.png")
    write_folder(tmp_path, {"train": 2, "val": 1})
    cfg = data_config(source="folder", root=str(tmp_path), image_size=32, workers=0, max_pixels=970)
    train = TrainData(cfg, torch.device("cpu"))
    kept = {Path(p).name for p in train.skipped.reasons}
    assert len(train) + len(train.skipped) == 6 and 0 < len(train.skipped) < 6 and all(n.endswith(".jpg") for n in kept)
