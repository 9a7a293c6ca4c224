"""Datasets as in-memory uint8 image tensors with one or more label heads."""

from __future__ import annotations

from typing import Literal

from hicl.data.synthetic import ImageSet, make_synthetic
from hicl.manifest import DataConfig

# Keeps the test split disjoint from the training split of the same data seed.
TEST_SEED_OFFSET = 1_000_003


def load_split(data: DataConfig, split: Literal["train", "test"]) -> ImageSet:
    """The images and labels of one split, decoded once at `data.image_size`."""
    syn = data.synthetic
    if split == "train":
        return make_synthetic(syn.num_train, data.image_size, syn.seed)
    return make_synthetic(syn.num_test, data.image_size, syn.seed + TEST_SEED_OFFSET)


__all__ = ["ImageSet", "load_split"]
