"""`hicl linear-eval`: linear classifiers on frozen features, one per label head and evaluated stage.

`eval.stage` picks the pooled features: `last` (the model's output), `all` (every `feature_info`
stage, a per-stage table as in the multi-stage probes of mmselfsup and VISSL), an index or a name.

- `fast` protocol: features computed once (cached) without augmentation, streamed from the splits
  (the images are never all in memory), standardised with the training split's mean and std; one
  linear layer per head trained with SGD (momentum 0.9, cosine lr) on mini-batches drawn from a
  seeded generator. The heads share the batches but not their weights,
  so training them together equals training them apart.
- `paper` protocol (`fit_linear_paper`): augmented training views, step decay, center crop at test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from hicl.augment import Pipeline, identity_params
from hicl.data import ImageSet
from hicl.data.fingerprint import tensor_fingerprint
from hicl.data.loader import eval_batches, load_split, open_split
from hicl.errors import HiclError
from hicl.evaluate.features import (
    Batches, StageFeatures, cached_split_features, pretrained_backbone, random_backbone,
)
from hicl.evaluate.provenance import provenance
from hicl.manifest import EvalConfig, Manifest
from hicl.runs import RunDir
from hicl.checkpoint import BACKBONE, open_checkpoint
from hicl.train.device import resolve_device
from hicl.train.optim import lr_at


@dataclass(frozen=True)
class ProbeScore:
    top1: float
    top5: float | None  # only for heads with more than 5 classes


def fit_linear_probes(
    train_x: torch.Tensor,
    train_y: dict[str, torch.Tensor],
    test_x: torch.Tensor,
    test_y: dict[str, torch.Tensor],
    num_classes: dict[str, int],
    cfg: EvalConfig,
    seed: int,
) -> dict[str, ProbeScore]:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    heads = list(train_y)
    generator = torch.Generator().manual_seed(seed)
    weights = {h: torch.zeros(num_classes[h], train_x.shape[1], requires_grad=True) for h in heads}
    biases = {h: torch.zeros(num_classes[h], requires_grad=True) for h in heads}
    params = [*weights.values(), *biases.values()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n = len(train_x)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for index in order[: steps_per_epoch * cfg.batch_size].view(steps_per_epoch, -1):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, 0, cfg.lr)
            x = train_x[index]
            loss = sum(F.cross_entropy(x @ weights[h].T + biases[h], train_y[h][index]) for h in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        return {h: probe_score(test_x @ weights[h].T + biases[h], test_y[h], num_classes[h]) for h in heads}


@dataclass(frozen=True)
class FrozenBackbone:
    """One evaluated column: the backbone's stage features, the stages `eval.stage` names, its cache key."""

    name: str  # pretrained | random_init
    key: str
    weights_sha256: str | None  # of the weights (None at random init)
    features: StageFeatures
    stages: list[str]


def frozen_backbones(manifest: Manifest, run: RunDir, device: torch.device) -> Iterator[FrozenBackbone]:
    """The run's (or `eval.checkpoint`'s) backbone, then, if asked, the same one at random init; built one
    at a time so that only one is in memory."""
    checkpoint = open_checkpoint(manifest.eval.checkpoint or run.last_checkpoint)
    makers: dict[str, Callable[[], tuple[nn.Module, str]]] = {"pretrained": lambda: pretrained_backbone(manifest, checkpoint)}
    if manifest.eval.random_init_baseline:
        makers["random_init"] = lambda: random_backbone(manifest)
    for name, make in makers.items():
        backbone, key = make()
        features = StageFeatures(backbone, manifest.backbone.name, manifest.view_size).to(device)
        stages = features.resolve(None if manifest.eval.stage == "all" else [manifest.eval.stage])
        weights_sha256 = checkpoint.sha256(BACKBONE) if name == "pretrained" else None
        yield FrozenBackbone(name, key, weights_sha256, features, stages)


def eval_heads(manifest: Manifest, available: list[str]) -> list[str]:
    """The label heads to score: `eval.heads`, checked against the data's, or all of them."""
    heads = manifest.eval.heads or available
    unknown = [h for h in heads if h not in available]
    if unknown:
        raise HiclError(f"eval.heads: no label head {unknown[0]!r}; the data has {', '.join(available)}")
    return heads


def eval_splits(manifest: Manifest) -> tuple[ImageSet, ImageSet, list[str]]:
    """The labeled train and test splits decoded in memory with the evaluation transform, and the heads
    to score (for the paper protocol and the training monitor; the fast protocols stream)."""
    train, test = (load_split(manifest.data, split, manifest.view_size) for split in ("train", "test"))
    return train, test, eval_heads(manifest, list(train.labels))


@dataclass(frozen=True)
class StreamedSplits:
    """The labeled splits opened (files listed, nothing decoded), for the cached-feature protocols."""

    batches: dict[str, Callable[[], Batches]]  # split -> its batches with the evaluation transform, in order
    num_classes: dict[str, int]
    heads: list[str]


def streamed_splits(manifest: Manifest) -> StreamedSplits:
    opened = {split: open_split(manifest.data, split) for split in ("train", "test")}
    batches = {split: functools.partial(eval_batches, manifest.data, split, manifest.view_size, data=data)
               for split, data in opened.items()}
    num_classes = dict(opened["train"].num_classes)
    return StreamedSplits(batches, num_classes, eval_heads(manifest, list(num_classes)))


def linear_eval(manifest: Manifest, run: RunDir, console: Console | None = None) -> dict:
    """Scores of the run's backbone (and of the same backbone at random init) on every label head,
    for the stages `eval.stage` names, by the protocol `eval.protocol`."""
    console = console or Console(stderr=True, soft_wrap=True)
    cfg = manifest.eval
    device = resolve_device(manifest.runtime)
    if cfg.protocol == "fast":
        streamed = streamed_splits(manifest)
        num_classes, heads = streamed.num_classes, streamed.heads
    else:
        train, test, heads = eval_splits(manifest)
        num_classes = train.num_classes
    by_stage: dict[str, dict] = {}
    result: dict = {"run": str(run.path)}
    for frozen in frozen_backbones(manifest, run, device):
        name, stage_features, stages = frozen.name, frozen.features, frozen.stages
        label = name.replace("_", " ")
        if cfg.protocol == "fast":
            with console.status(f"features of the {label} backbone"):
                split_features = cached_split_features(
                    run.results / "features" / f"{name}.safetensors", frozen.key, stage_features, stages,
                    streamed.batches, manifest, device,
                )
            train_set, test_set = split_features["train"], split_features["test"]
            with console.status(f"linear probes on the {label} features"):
                scores = {
                    stage: fit_linear_probes(
                        train_set.features[stage], {h: train_set.labels[h] for h in heads},
                        test_set.features[stage], {h: test_set.labels[h] for h in heads},
                        num_classes, cfg, manifest.seed,
                    )
                    for stage in stages
                }
            fingerprints = {split: f.fingerprint for split, f in split_features.items()}
        else:
            with console.status(f"linear probes on the {label} backbone (paper protocol, {cfg.epochs} epochs)"):
                scores = fit_linear_paper(stage_features, stages, train, test, heads, manifest, device)
            fingerprints = {"train": tensor_fingerprint(train.images), "test": tensor_fingerprint(test.images)}
        for stage in stages:
            rows = by_stage.setdefault(stage, {h: {"classes": num_classes[h]} for h in heads})
            for h in heads:
                rows[h][name] = {"top1": scores[stage][h].top1, "top5": scores[stage][h].top5}
        if name == "pretrained":
            protocol = {"name": cfg.protocol, **cfg.model_dump(mode="json", exclude={"after_pretrain"})}
            result.update(provenance(manifest, frozen.weights_sha256, fingerprints, protocol))
    result["stages"] = {stage: {"heads": rows} for stage, rows in by_stage.items()}
    result["heads"] = by_stage[list(by_stage)[-1]]  # the deepest evaluated stage (the model output for `last`)
    run.write_result("linear_eval.json", result)
    return result


def step_decay_lr(step: int, total: int, base_lr: float, milestones: list[float]) -> float:
    """base_lr x 0.1 for every milestone fraction of the total steps already passed."""
    return base_lr * 0.1 ** sum(step >= m * total for m in milestones)


def center_crop_views(images: torch.Tensor, fraction: float, manifest: Manifest) -> torch.Tensor:
    """The central `fraction` x `fraction` box of every image, resized to the view size and normalised."""
    height, width = images.shape[-2:]
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    params = identity_params(len(images), (height, width), images.device)
    params["crop_box"] = torch.tensor([(height - h) // 2, (width - w) // 2, h, w], device=images.device).repeat(
        len(images), 1
    )
    return Pipeline(["crop"], manifest.augment, manifest.view_size).apply(images, params)


def fit_linear_paper(
    stage_features: StageFeatures,
    stages: list[str],
    train: ImageSet,
    test: ImageSet,
    heads: list[str],
    manifest: Manifest,
    device: torch.device,
) -> dict[str, dict[str, ProbeScore]]:
    """The paper protocol: linear heads on the frozen backbone's pooled stage features of augmented views.

    Every step draws a batch (seeded order) and makes one random-resized-crop (`eval.crop_scale`,
    the augment section's aspect ratios) + horizontal-flip (p = 0.5) view per image with hicl's batched
    ops; SGD with momentum 0.9, lr `eval.lr` x 0.1 at each of `eval.milestones`; raw (not standardised)
    features, as in the reference protocols. The images are those of the evaluation transform (shorter
    side to view_size / data.crop_pct, centre crop), so at test they are used as they are.
    """
    cfg = manifest.eval
    augment = manifest.augment.model_copy(
        update={
            "crop": manifest.augment.crop.model_copy(update={"scale": cfg.crop_scale}),
            "flip": manifest.augment.flip.model_copy(update={"p": 0.5}),
        }
    )
    pipeline = Pipeline(["crop", "flip"], augment, manifest.view_size)
    order_gen = torch.Generator().manual_seed(manifest.seed)
    view_gen = torch.Generator().manual_seed(manifest.seed + 1)
    probe = stage_features(center_crop_views(train.images[:2].to(device), 1.0, manifest))
    linears = {
        (s, h): nn.Linear(probe[s].shape[1], train.num_classes[h]).to(device) for s in stages for h in heads
    }
    for layer in linears.values():
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    params = [p for layer in linears.values() for p in layer.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n = len(train)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = cfg.epochs * steps_per_epoch
    labels = {h: train.labels[h].to(device) for h in heads}
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=order_gen)
        for index in order[: steps_per_epoch * batch].view(steps_per_epoch, -1):
            for group in optimizer.param_groups:
                group["lr"] = step_decay_lr(step, total, cfg.lr, cfg.milestones)
            views, _ = pipeline(train.images[index].to(device), view_gen)
            features = stage_features(views)
            loss = sum(
                F.cross_entropy(linears[s, h](features[s]), labels[h][index.to(device)]) for s in stages for h in heads
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return _score_linears(linears, stage_features, stages, test, manifest, device)


@torch.no_grad()
def _score_linears(
    linears: dict[tuple[str, str], nn.Module], stage_features: StageFeatures, stages: list[str], test: ImageSet,
    manifest: Manifest, device: torch.device,
) -> dict[str, dict[str, ProbeScore]]:
    """Each (stage, head) linear layer's scores on the test images, used as they are (no augmentation)."""
    logits: dict[tuple[str, str], list[torch.Tensor]] = {key: [] for key in linears}
    for start in range(0, len(test), 512):
        features = stage_features(center_crop_views(test.images[start : start + 512].to(device), 1.0, manifest))
        for (s, h), layer in linears.items():
            logits[s, h].append(layer(features[s]).cpu())
    scores: dict[str, dict[str, ProbeScore]] = {s: {} for s in stages}
    for (s, h), chunks in logits.items():
        scores[s][h] = probe_score(torch.cat(chunks), test.labels[h], test.num_classes[h])
    return scores


def probe_score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ProbeScore:
    top1 = (logits.argmax(1) == labels).float().mean().item()
    top5 = None
    if num_classes > 5:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return ProbeScore(top1, top5)


def render_linear_eval(result: dict, title: str = "linear evaluation") -> Table:
    """One row per (stage, head); the stage column only when more than one stage was evaluated."""
    stages = result.get("stages") or {"": {"heads": result["heads"]}}
    columns = [c for c in ("pretrained", "random_init") if c in next(iter(result["heads"].values()))]
    protocol = result.get("protocol", {}).get("name", "fast")
    table = Table(title=f"{title} ({protocol} protocol, test split, %)")
    if len(stages) > 1:
        table.add_column("stage")
    table.add_column("head")
    table.add_column("classes", justify="right")
    for c in columns:
        table.add_column(f"{c.replace('_', ' ')} top-1", justify="right")
        table.add_column(f"{c.replace('_', ' ')} top-5", justify="right")
    for stage, entry in stages.items():
        for head, row in entry["heads"].items():
            cells = [stage] if len(stages) > 1 else []
            cells += [head, str(row["classes"])]
            for c in columns:
                top5 = row[c]["top5"]
                cells += [f"{100 * row[c]['top1']:.1f}", "-" if top5 is None else f"{100 * top5:.1f}"]
            table.add_row(*cells)
    return table
