"""`hicl knn`: weighted kNN (`hicl.evaluate.knn`) on the frozen, cached features, per label head and stage."""

from __future__ import annotations

from rich.console import Console

from hicl.evaluate.features import cached_split_features
from hicl.evaluate.knn import knn_accuracy, weighted_knn
from hicl.evaluate.linear import frozen_backbones, streamed_splits
from hicl.evaluate.provenance import provenance
from hicl.manifest import Manifest
from hicl.runs import RunDir
from hicl.train.device import resolve_device


def knn_eval(manifest: Manifest, run: RunDir, console: Console | None = None) -> dict:
    """Top-1 (top-5) of weighted kNN with the training split as memory; writes results/knn.json."""
    console = console or Console(stderr=True, soft_wrap=True)
    cfg = manifest.eval
    device = resolve_device(manifest.runtime)
    splits = streamed_splits(manifest)
    by_stage: dict[str, dict] = {}
    result: dict = {"run": str(run.path)}
    for frozen in frozen_backbones(manifest, run, device):
        name, stages = frozen.name, frozen.stages
        with console.status(f"features of the {name.replace('_', ' ')} backbone"):
            split_features = cached_split_features(
                run.results / "features" / f"{name}.safetensors", frozen.key, frozen.features, stages,
                splits.batches, manifest, device,
            )
        train, test = split_features["train"], split_features["test"]
        for stage in stages:
            rows = by_stage.setdefault(stage, {h: {"classes": splits.num_classes[h]} for h in splits.heads})
            for h in splits.heads:
                scores = weighted_knn(
                    train.features[stage], train.labels[h], test.features[stage], splits.num_classes[h],
                    cfg.knn_k, cfg.knn_temperature,
                )
                top1, top5 = knn_accuracy(scores, test.labels[h])
                rows[h][name] = {"top1": top1, "top5": top5}
        if name == "pretrained":
            protocol = {"name": "knn", "k": cfg.knn_k, "temperature": cfg.knn_temperature, "stage": cfg.stage}
            fingerprints = {split: f.fingerprint for split, f in split_features.items()}
            result.update(provenance(manifest, frozen.weights_sha256, fingerprints, protocol))
    result["stages"] = {stage: {"heads": rows} for stage, rows in by_stage.items()}
    result["heads"] = by_stage[list(by_stage)[-1]]
    run.write_result("knn.json", result)
    return result
