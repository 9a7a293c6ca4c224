"""`hicl linear-eval`: linear classifiers on frozen, cached features, one per label head.

Features are standardised with the training split's mean and std; one linear layer per head is
trained with SGD (momentum 0.9, cosine lr) on mini-batches drawn from a seeded generator. The heads
share the batches but not their weights, so training them together equals training them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from hicl.data import load_split
from hicl.errors import HiclError
from hicl.evaluate.features import cached_features, extract_features, pretrained_backbone, random_backbone
from hicl.manifest import EvalConfig, Manifest
from hicl.runs import RunDir
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
    scores = {}
    with torch.no_grad():
        for h in heads:
            logits = test_x @ weights[h].T + biases[h]
            labels = test_y[h]
            top1 = (logits.argmax(1) == labels).float().mean().item()
            top5 = None
            if num_classes[h] > 5:
                top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
            scores[h] = ProbeScore(top1, top5)
    return scores


def linear_eval(manifest: Manifest, run: RunDir, console: Console | None = None) -> dict:
    """Scores of the run's backbone (and of the same backbone at random init) on every label head."""
    console = console or Console(stderr=True)
    device = resolve_device(manifest.runtime)
    train, test = (load_split(manifest.data, split, manifest.view_size) for split in ("train", "test"))
    heads = manifest.eval.heads or list(train.labels)
    unknown = [h for h in heads if h not in train.labels]
    if unknown:
        raise HiclError(f"eval.heads: no label head {unknown[0]!r}; the data has {', '.join(train.labels)}")

    checkpoint = manifest.eval.checkpoint or run.last_checkpoint
    backbones = {"pretrained": lambda: pretrained_backbone(manifest, checkpoint)}
    if manifest.eval.random_init_baseline:
        backbones["random_init"] = lambda: random_backbone(manifest)
    result: dict = {"run": str(run.path), "heads": {h: {"classes": train.num_classes[h]} for h in heads}}
    for name, make in backbones.items():
        backbone, key = make()
        with console.status(f"features of the {name.replace('_', ' ')} backbone"):
            features = cached_features(
                run.results / "features" / f"{name}.safetensors",
                key,
                {split: (lambda s=s, b=backbone: extract_features(b, s.images, manifest, device))
                 for split, s in (("train", train), ("test", test))},
            )
        with console.status(f"linear probes on the {name.replace('_', ' ')} features"):
            scores = fit_linear_probes(
                features["train"], {h: train.labels[h] for h in heads},
                features["test"], {h: test.labels[h] for h in heads},
                train.num_classes, manifest.eval, manifest.seed,
            )
        for h in heads:
            result["heads"][h][name] = {"top1": scores[h].top1, "top5": scores[h].top5}
    run.write_result("linear_eval.json", result)
    return result


def render_linear_eval(result: dict) -> Table:
    columns = [c for c in ("pretrained", "random_init") if c in next(iter(result["heads"].values()))]
    table = Table(title="linear evaluation (test split, %)")
    table.add_column("head")
    table.add_column("classes", justify="right")
    for c in columns:
        table.add_column(f"{c.replace('_', ' ')} top-1", justify="right")
        table.add_column(f"{c.replace('_', ' ')} top-5", justify="right")
    for head, row in result["heads"].items():
        cells = [head, str(row["classes"])]
        for c in columns:
            top5 = row[c]["top5"]
            cells += [f"{100 * row[c]['top1']:.1f}", "-" if top5 is None else f"{100 * top5:.1f}"]
        table.add_row(*cells)
    return table
