"""Batched per-sample augmentation on the batch's device, returning the parameters of every view."""

from hicl.augment.ops import ColorJitterParams
from hicl.augment.pipeline import PARAM_DIMS, Params, Pipeline, identity_params, param_vector_dim, param_vectors

__all__ = [
    "PARAM_DIMS", "ColorJitterParams", "Params", "Pipeline", "identity_params", "param_vector_dim", "param_vectors",
]
