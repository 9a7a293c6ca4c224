"""Weighted kNN against a direct per-query computation and on cases with known answers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hicl.evaluate.knn import knn_accuracy, weighted_knn


def test_two_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, 16)
    centres[0, 0], centres[1, 1] = 10.0, 10.0
    train_y = torch.arange(200) % 2
    test_y = torch.arange(60) % 2
    train = centres[train_y] + torch.randn(200, 16, generator=g)
    test = centres[test_y] + torch.randn(60, 16, generator=g)
    scores = weighted_knn(train, train_y, test, num_classes=2, k=200, temperature=0.1)
    assert scores.shape == (60, 2)
    assert knn_accuracy(scores, test_y) == (1.0, None)


def test_scores_match_a_direct_computation_and_k_is_capped():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    scores = weighted_knn(train, labels, test, num_classes=4, k=10, temperature=0.5, chunk_size=3)
    for i in range(7):
        sim = F.cosine_similarity(test[i : i + 1], train, dim=1)
        top = sim.argsort(descending=True)[:10]
        expected = torch.zeros(4)
        for j in top:
            expected[labels[j]] += torch.exp(sim[j] / 0.5)
        torch.testing.assert_close(scores[i], expected, atol=1e-4, rtol=1e-4)
    everything = weighted_knn(train, labels, test, num_classes=4, k=1000)
    assert torch.all(everything.sum(1) > 0)


def test_top5_and_scale_invariance():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(80, 8, generator=g), torch.randn(20, 8, generator=g)
    labels = torch.randint(0, 10, (80,), generator=g)
    a = weighted_knn(train, labels, test, num_classes=10, k=20)
    b = weighted_knn(3 * train, labels, 0.5 * test, num_classes=10, k=20)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    top1, top5 = knn_accuracy(a, a.argmax(1))
    assert top1 == 1.0 and top5 == 1.0
