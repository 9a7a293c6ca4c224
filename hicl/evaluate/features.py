"""Frozen-backbone features: the global-pooled output of the timm model, computed once and cached."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from hicl.errors import HiclError
from hicl.manifest import Manifest, NormalizeConfig
from hicl.models.backbone import create_backbone
from hicl.train.checkpoint import find_checkpoint, load_backbone_state


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


def pretrained_backbone(manifest: Manifest, checkpoint: Path) -> tuple[nn.Module, str]:
    """The run's backbone and a key that changes whenever its weights do."""
    backbone = create_backbone(manifest.backbone)
    try:
        backbone.load_state_dict(load_backbone_state(checkpoint))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise HiclError(f"{checkpoint}: checkpoint does not match the manifest's backbone ({first[:200]})") from None
    found = find_checkpoint(checkpoint)
    digest = hashlib.sha256((found / "backbone.safetensors").read_bytes()).hexdigest()[:16]
    return backbone, f"pretrained-{digest}"


def random_backbone(manifest: Manifest) -> tuple[nn.Module, str]:
    """The same architecture at the initialisation the run started from (same seed)."""
    torch.manual_seed(manifest.seed)
    return create_backbone(manifest.backbone), f"random-{manifest.backbone.name}-{manifest.seed}"


def cached_features(cache: Path, key: str, compute: dict[str, Callable[[], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Features per split from `cache` if it was written for `key`, else computed and written."""
    if cache.is_file():
        with safe_open(cache, framework="pt") as f:
            if (f.metadata() or {}).get("key") == key and set(f.keys()) == set(compute):
                return {name: f.get_tensor(name) for name in compute}
    features = {name: fn() for name, fn in compute.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in features.items()}, tmp, metadata={"key": key})
    tmp.replace(cache)
    return features
