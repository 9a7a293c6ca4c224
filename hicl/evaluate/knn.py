"""Weighted k-nearest-neighbour classification on frozen features (InstDisc, Wu et al. 2018; DINO).

For a test feature q and training features t_j with labels y_j, all L2-normalised:

    sim_j = q . t_j                                   (cosine similarity)
    N_k   = the k training samples with the largest sim_j
    score_c = sum_{j in N_k, y_j = c} exp(sim_j / T)

and the prediction is argmax_c score_c (k = 200, T = 0.1 by default, as most SSL libraries report).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hicl.data import ImageSet
from hicl.evaluate.features import extract_features
from hicl.manifest import Manifest


@torch.no_grad()
def weighted_knn(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores [N_test, num_classes] (see the module docstring); k is capped at the training size."""
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, len(train))
    scores = []
    for start in range(0, len(test_features), chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float().to(train.device), dim=1)
        sim, index = (query @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        chunk = torch.zeros(len(query), num_classes, device=train.device, dtype=weights.dtype)
        scores.append(chunk.scatter_add_(1, labels[index], weights))
    if not scores:
        return torch.zeros(0, num_classes, device=train.device)
    return torch.cat(scores)


def knn_accuracy(scores: Tensor, labels: Tensor) -> tuple[float, float | None]:
    """(top-1, top-5 or None when there are at most 5 classes) of kNN scores."""
    labels = labels.to(scores.device)
    top1 = (scores.argmax(1) == labels).float().mean().item()
    top5 = None
    if scores.shape[1] > 5:
        top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return top1, top5


def monitor_top1(backbone: nn.Module, train: ImageSet, test: ImageSet, head: str, manifest: Manifest,
                 device: torch.device) -> float:
    """kNN top-1 of `backbone`'s pooled features on one label head (`eval.knn_k`, `eval.knn_temperature`),
    for the online monitor during pretraining. Leaves the backbone in eval mode; draws no random numbers."""
    train_features = extract_features(backbone, train.images, manifest, device)
    test_features = extract_features(backbone, test.images, manifest, device)
    scores = weighted_knn(train_features, train.labels[head], test_features, train.num_classes[head],
                          manifest.eval.knn_k, manifest.eval.knn_temperature)
    return knn_accuracy(scores, test.labels[head])[0]
