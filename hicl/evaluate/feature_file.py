"""Feature files written as they stream in: `.safetensors`, or `.npy` (one per stage), each with a `.csv` index.

Rows arrive batch by batch; each stage's float32 rows go straight to a raw part file on disk, so memory
does not grow with the number of images (only the labels, 8 bytes per image and head, are kept). At the
end the header is written (now that the row count is known, after skipped files) and the part files are
copied behind it block by block.

    FILE.safetensors   one [N, C] float32 tensor per stage (named by the stage), `labels/<head>` int64 [N]
    FILE.npy           the one stage's [N, C] float32 rows (several stages: FILE.<stage>.npy each)
    FILE.csv           index, name (the image's path or record), one column per label head
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
from pathlib import Path

import numpy as np

from hicl.errors import HiclError

FORMATS = (".safetensors", ".npy")
BLOCK = 1 << 22


def check_out(out: Path) -> None:
    """A one-line refusal of an output file hicl cannot write (before any image is read)."""
    if out.suffix not in FORMATS:
        raise HiclError(f"--out: {out} has no known suffix; expected one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise HiclError(f"--out: {out} is a folder; expected a file name")
    if not out.parent.is_dir():
        raise HiclError(f"--out: folder {out.parent} does not exist")


class FeatureWriter:
    """Appends (features per stage, labels per head, names) batches; `close()` writes the final files."""

    def __init__(self, out: Path, stages: list[str], metadata: dict[str, str]):
        check_out(out)
        self.out, self.stages, self.metadata = out, stages, metadata
        self.parts = {s: out.with_name(f".{out.name}.{i}.part") for i, s in enumerate(stages)}
        self.handles = {s: p.open("wb") for s, p in self.parts.items()}
        self.widths: dict[str, int] = {}
        self.labels: dict[str, list[np.ndarray]] = {}
        self.rows = 0
        self.csv_path = out.with_suffix(".csv")
        self.csv_file = self.csv_path.open("w", newline="")
        self.csv = csv.writer(self.csv_file)

    def add(self, features: dict[str, np.ndarray], labels: dict[str, np.ndarray], names: list[str]) -> None:
        """One batch: [B, C] rows per stage, [B] labels per head, B names."""
        if self.rows == 0:
            self.csv.writerow(["index", "name", *labels])
        for stage in self.stages:
            rows = np.ascontiguousarray(features[stage], dtype=np.float32)
            self.widths.setdefault(stage, rows.shape[1])
            self.handles[stage].write(rows.tobytes())
        for head, y in labels.items():
            self.labels.setdefault(head, []).append(np.asarray(y, dtype=np.int64))
        for offset, name in enumerate(names):
            self.csv.writerow([self.rows + offset, name, *(int(labels[h][offset]) for h in labels)])
        self.rows += len(names)

    def close(self) -> list[Path]:
        """The files written: the feature file(s), then the CSV index."""
        for handle in self.handles.values():
            handle.close()
        self.csv_file.close()
        try:
            if self.rows == 0:
                raise HiclError("--data: no readable images")
            written = self._safetensors() if self.out.suffix == ".safetensors" else self._npy()
        finally:
            for part in self.parts.values():
                part.unlink(missing_ok=True)
        return [*written, self.csv_path]

    def abort(self) -> None:
        """Remove everything written so far (a failed or interrupted run leaves no half file)."""
        for handle in self.handles.values():
            handle.close()
        self.csv_file.close()
        for path in [*self.parts.values(), self.csv_path]:
            path.unlink(missing_ok=True)

    def _safetensors(self) -> list[Path]:
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        labels = {h: np.concatenate(y) for h, y in self.labels.items()}
        for stage in self.stages:
            size = self.rows * self.widths[stage] * 4
            header[stage] = {"dtype": "F32", "shape": [self.rows, self.widths[stage]], "data_offsets": [offset, offset + size]}
            offset += size
        for head, y in labels.items():
            header[f"labels/{head}"] = {"dtype": "I64", "shape": [self.rows], "data_offsets": [offset, offset + y.nbytes]}
            offset += y.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        with self.out.open("wb") as f:
            f.write(struct.pack("<Q", len(encoded)) + encoded)
            for stage in self.stages:
                with self.parts[stage].open("rb") as part:
                    shutil.copyfileobj(part, f, BLOCK)
            for y in labels.values():
                f.write(y.tobytes())
        return [self.out]

    def _npy(self) -> list[Path]:
        written = []
        for stage in self.stages:
            path = self.out if len(self.stages) == 1 else self.out.with_name(f"{self.out.stem}.{stage}.npy")
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.widths[stage])}
            with path.open("wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                with self.parts[stage].open("rb") as part:
                    shutil.copyfileobj(part, f, BLOCK)
            written.append(path)
        return written
