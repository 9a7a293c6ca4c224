"""The model card (`README.md`) every export folder gets: what the model is, how it was trained and scored,
and the exact code that loads it in the target framework.

The timm folder's card follows the Hugging Face model-card layout: YAML front matter (`library_name: timm`,
`tags`, `license`), so the folder can be pushed to a model hub unchanged; hicl itself makes no network call.
The run's training curve (results/training.png), when there is one, is copied beside the card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

import hicl
from hicl.augment.hierarchy import stage_ops
from hicl.export.base import ExportResult, ExportSource

CARD = "README.md"
CURVE = "training.png"
LICENSE = "other"  # the weights inherit the licence of the training data, which hicl cannot know


def load_code(format_name: str, out: Path, source: ExportSource, result: ExportResult) -> str:
    """The Python that loads this export in its framework (what the card shows and the tests run)."""
    size = source.manifest.view_size
    if format_name == "timm":
        return f'import timm\n\nmodel = timm.create_model("local-dir:{out.resolve()}", pretrained=True, num_classes=0)\nmodel.eval()'
    if format_name == "torchvision":
        statements = result.record["load"].replace("; ", "\n")
        return f"import safetensors.torch\nimport torch\nimport torchvision\n\n{statements}\nmodel.eval()"
    if format_name == "onnx":
        return ("import numpy as np\nimport onnxruntime\n\n"
                f"session = onnxruntime.InferenceSession({str(out / 'backbone.onnx')!r})\n"
                f"features = session.run(['features'], {{'images': np.zeros((1, 3, {size}, {size}), np.float32)}})[0]")
    if format_name == "detectron2":
        return ("from detectron2.config import get_cfg\n\ncfg = get_cfg()\n"
                f"cfg.merge_from_file({str(out / 'config.yaml')!r})  # MODEL.WEIGHTS and the ResNet settings")
    return f"import hicl\n\nmodel, data_config = hicl.load_backbone({str(out)!r})"


def _results(source: ExportSource) -> list[str]:
    """Table rows of the evaluations recorded in the run (first label head, pretrained backbone)."""
    rows = []
    for name, title in (("linear_eval.json", "linear"), ("knn.json", "kNN")):
        path = source.run.results / name
        try:
            record = json.loads(path.read_text())
            head, row = next(iter(record["heads"].items()))
            top1 = row["pretrained"]["top1"]
        except (OSError, ValueError, KeyError, StopIteration, TypeError):
            continue
        protocol = record.get("protocol", {})
        described = ", ".join(f"{k} {v}" for k, v in protocol.items() if k in ("name", "epochs", "k", "stage"))
        rows.append(f"| {title} top-1 ({head}) | {100 * top1:.1f} % ({described}) |")
    return rows or ["| evaluation | none recorded in the run (hicl linear-eval / hicl knn) |"]


def _data(source: ExportSource) -> str:
    try:
        fingerprint = json.loads(source.run.env_path.read_text())["data"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        fingerprint = {}
    data = source.manifest.data
    name = getattr(data, "root", None) or data.source
    return f"{name} ({data.source}), {fingerprint.get('images', '?')} images, fingerprint {fingerprint.get('pixels_sha256', '?')}"


def card_text(format_name: str, out: Path, source: ExportSource, result: ExportResult, curve: bool) -> str:
    """The card: front matter (timm), a summary table, results, the training curve and the load code."""
    m, meta = source.manifest, source.metadata()
    recipe = "; ".join(f"stage {i + 1}: {', '.join(ops)}" for i, ops in enumerate(stage_ops(m.hierarchy, m.augment)))
    lines = []
    if format_name == "timm":
        front = {"library_name": "timm", "license": LICENSE,
                 "tags": ["image-feature-extraction", "timm", "self-supervised", "hicl", m.method.name]}
        lines += ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# {m.name}: {m.backbone.name} pretrained with hicl ({m.method.name})", "",
        f"A {m.backbone.name} backbone pretrained self-supervised with {m.method.name} and hierarchical augmentation "
        f"invariance (hierarchy mode `{m.hierarchy.mode}`), exported as `{format_name}`.", "",
        "| | |", "|---|---|",
        f"| backbone | {m.backbone.name} ({meta['input_size']} px, mean {meta['mean']}, std {meta['std']}) |",
        f"| method | {m.method.name} |",
        f"| hierarchy | {m.hierarchy.mode} |",
        f"| augmentation | {recipe} |",
        f"| data | {_data(source)} |",
        f"| epochs | {meta['epochs']} ({meta['steps']} steps) of {m.schedule.epochs} planned |",
        *_results(source),
        f"| hicl | {hicl.__version__}, manifest sha256 {meta['manifest_sha256']} |", "",
    ]
    if curve:
        lines += ["## Training curve", "", f"![training curve]({CURVE})", ""]
    lines += ["## How to load", "", "```python", load_code(format_name, out, source, result), "```", ""]
    return "\n".join(lines)


def write_card(format_name: str, out: Path, source: ExportSource, result: ExportResult) -> list[Path]:
    """README.md (and the training curve beside it, if the run drew one); the files written. A file of the
    user's own by either name (kept beside an earlier export) is left alone, and no card is written."""
    if (out / CARD).exists() or (out / CURVE).exists():
        result.notes.append(f"{out / CARD}: a file hicl did not write is there; no model card written")
        return []
    written = []
    plot = source.run.results / CURVE
    if plot.is_file():
        written.append(Path(shutil.copyfile(plot, out / CURVE)))
    card = out / CARD
    card.write_text(card_text(format_name, out, source, result, curve=bool(written)))
    return [card, *written]


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (empty when it has none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---", 4)
    return yaml.safe_load(text[4:end]) or {}
