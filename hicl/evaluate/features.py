"""Frozen-backbone features: the global-pooled output of the timm model, computed once and cached."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from hicl.errors import HiclError
from hicl.manifest import Manifest, NormalizeConfig
from hicl.models.backbone import StageRunner, create_backbone, feature_stages
from hicl.checkpoint import BACKBONE, Checkpoint, open_checkpoint


def model_input(images: torch.Tensor, size: int, normalize: NormalizeConfig) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float32 at `size` (bilinear, antialiased resize if needed)."""
    x = images.float() / 255
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(normalize.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalize.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    backbone: nn.Module, images: torch.Tensor, manifest: Manifest, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    backbone.eval().to(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        x = model_input(images[start : start + batch_size].to(device), manifest.view_size, manifest.augment.normalize)
        chunks.append(backbone(x).float().cpu())
    return torch.cat(chunks)


def pretrained_backbone(manifest: Manifest, checkpoint: Path | Checkpoint) -> tuple[nn.Module, str]:
    """The run's backbone and a key that changes whenever its weights do (the SHA-256 the load verified)."""
    opened = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    backbone = create_backbone(manifest.backbone)
    try:
        backbone.load_state_dict(opened.backbone_state())
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise HiclError(f"{opened.path}: checkpoint does not match the manifest's backbone ({first[:200]})") from None
    return backbone, f"pretrained-{opened.sha256(BACKBONE)[:16]}"


def random_backbone(manifest: Manifest) -> tuple[nn.Module, str]:
    """The same architecture at the initialisation the run started from (same seed)."""
    torch.manual_seed(manifest.seed)
    return create_backbone(manifest.backbone), f"random-{manifest.backbone.name}-{manifest.seed}"


class StageFeatures:
    """Global-average-pooled output of every `feature_info` stage of a timm model, in one forward pass.

    The last stage's feature is the model's own pooled output (`model(x)`, what linear evaluation and
    every export use); earlier stages are their maps averaged over space. Works for any backbone the
    `StageRunner` can tap (ResNet, RegNet, ConvNeXt, EfficientNet, ViT block groups, ...).
    """

    def __init__(self, backbone: nn.Module, model_name: str, input_size: int):
        self.stages = feature_stages(backbone)
        self.runner = StageRunner(backbone, self.stages, model_name, probe_size=input_size)
        self.names = [s.name for s in self.stages]

    def resolve(self, selectors: list[str] | None) -> list[str]:
        """Stage names from names, 1-based indices, `last` or `all` (default: all)."""
        if not selectors or selectors == ["all"]:
            return list(self.names)
        chosen = []
        for sel in selectors:
            if sel == "last":
                name = self.names[-1]
            elif sel.isdigit() and 1 <= int(sel) <= len(self.names):
                name = self.names[int(sel) - 1]
            elif sel in self.names:
                name = sel
            else:
                raise HiclError(
                    f"stage {sel!r}: expected all, last, 1..{len(self.names)} or one of {', '.join(self.names)}"
                )
            if name not in chosen:
                chosen.append(name)
        return sorted(chosen, key=self.names.index)

    def to(self, device: torch.device) -> StageFeatures:
        self.runner.eval().to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised float images [B, 3, S, S] -> {stage name: float32 [B, C_stage]}."""
        self.runner.eval()
        out = {}
        last = len(self.stages) - 1
        for index, name in enumerate(self.names):
            x = self.runner.run_segment(index, x)
            # ViT block outputs are tokens; the runner's own conversion makes them [B, C, h, w] maps
            pooled = x if index == last else self.runner._to_map(x).float().mean(dim=(2, 3))
            out[name] = pooled.float()
        return out


@dataclass(frozen=True)
class SplitFeatures:
    """A labeled split reduced to what the fast protocols need: pooled features per stage, labels per
    head, and the fingerprint of the uint8 images they came from (`tensor_fingerprint` of the split)."""

    features: dict[str, torch.Tensor]  # stage -> float32 [N, C]
    labels: dict[str, torch.Tensor]  # head -> int64 [N]
    fingerprint: str


Batches = Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (uint8 [B, 3, S, S], labels per head)


@torch.no_grad()
def stream_stage_features(
    stage_features: StageFeatures, stages: list[str], batches: Batches, manifest: Manifest, device: torch.device
) -> SplitFeatures:
    """One pass over a split's batches: pooled features (on the CPU), labels and the images' fingerprint,
    without ever holding the images (so that ImageNet-scale splits fit)."""
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in stages}
    labels: dict[str, list[torch.Tensor]] = {}
    digest = hashlib.sha256()  # over the images in order: equals tensor_fingerprint of the whole split
    for images, batch_labels in batches:
        digest.update(images.contiguous().cpu().numpy().tobytes())
        out = stage_features(model_input(images.to(device), manifest.view_size, manifest.augment.normalize))
        for s in stages:
            chunks[s].append(out[s].cpu())
        for head, y in batch_labels.items():
            labels.setdefault(head, []).append(y)
    if not chunks[stages[0]]:
        raise HiclError("data: no readable images in an evaluation split")
    return SplitFeatures({s: torch.cat(c) for s, c in chunks.items()}, {h: torch.cat(y) for h, y in labels.items()},
                         digest.hexdigest()[:16])


def cached_split_features(
    cache: Path,
    key: str,
    stage_features: StageFeatures,
    stages: list[str],
    splits: dict[str, Callable[[], Batches]],
    manifest: Manifest,
    device: torch.device,
) -> dict[str, SplitFeatures]:
    """{split: its features, labels and fingerprint}, read from `cache` if it was written for `key`
    (the backbone's weights and the stages) on the same data and input transform, else computed from
    the split's batches and written."""
    inputs = f"{manifest.data.model_dump_json()}|{manifest.view_size}|{manifest.augment.normalize.model_dump_json()}"
    inputs_hash = hashlib.sha256(inputs.encode()).hexdigest()[:16]
    key = f"{key}|stages={','.join(stages)}|splits={','.join(splits)}|inputs={inputs_hash}"
    if cache.is_file():
        with safe_open(cache, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") == key:
                names = list(f.keys())
                return {
                    split: SplitFeatures(
                        {s: f.get_tensor(f"{split}/{s}") for s in stages},
                        {n.rsplit("/", 1)[1]: f.get_tensor(n) for n in names if n.startswith(f"{split}/labels/")},
                        meta[f"{split}/fingerprint"],
                    )
                    for split in splits
                }
    computed = {split: stream_stage_features(stage_features, stages, batches(), manifest, device)
                for split, batches in splits.items()}
    tensors = {f"{split}/{s}": x.contiguous() for split, sf in computed.items() for s, x in sf.features.items()}
    tensors |= {f"{split}/labels/{h}": y.contiguous() for split, sf in computed.items() for h, y in sf.labels.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"key": key, **{f"{split}/fingerprint": sf.fingerprint for split, sf in computed.items()}})
    tmp.replace(cache)
    return computed
