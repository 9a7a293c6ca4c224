"""hicl: hierarchical augmentation invariance with expanded views (Zhang & Ma, CVPR 2022)."""

__version__ = "0.1.0"
