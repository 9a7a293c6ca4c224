"""The built-in augmentation ops, one module each; importing this package registers them in `OPS`.

Each module defines one op's config, parameters, sampler, applier, encodings, strength rule and probe
variants (see `hicl.augment.op.Op`). For one sample, each applier computes what
``torchvision.transforms.v2.functional`` computes on a float tensor with that sample's parameters
(``tests/test_augment_ops.py`` checks this sample by sample). No torch at import time.
"""

from hicl.augment.batched import luma, normalize, sample_coin
from hicl.augment.op import OPS, op_names
from hicl.augment.ops.blur import BlurConfig, apply_blur, default_blur_kernel_size, gaussian_kernels, sample_blur
from hicl.augment.ops.color_jitter import (
    COLOR_ADJUSTERS, COLOR_FACTORS, COLOR_IDENTITY, ColorJitterConfig, ColorJitterParams, apply_color_jitter,
    hsv_to_rgb, rgb_to_hsv, sample_color_jitter,
)
from hicl.augment.ops.crop import CropConfig, apply_crop, full_box, sample_crop
from hicl.augment.ops.flip import FlipConfig, apply_flip, sample_flip
from hicl.augment.ops.grayscale import GrayscaleConfig, apply_grayscale, sample_grayscale
from hicl.augment.ops.rotation import RotationConfig, apply_rotation, sample_rotation
from hicl.augment.ops.solarize import SolarizeConfig, apply_solarize, sample_solarize
from hicl.registry import import_package

import_package(__name__)  # the ops not named above, one module each

__all__ = [
    "COLOR_ADJUSTERS", "COLOR_FACTORS", "COLOR_IDENTITY", "OPS", "BlurConfig", "ColorJitterConfig",
    "ColorJitterParams", "CropConfig", "FlipConfig", "GrayscaleConfig", "RotationConfig", "SolarizeConfig",
    "apply_blur", "apply_color_jitter", "apply_crop", "apply_flip", "apply_grayscale", "apply_rotation",
    "apply_solarize", "default_blur_kernel_size", "full_box", "gaussian_kernels", "hsv_to_rgb", "luma",
    "normalize", "op_names", "rgb_to_hsv", "sample_blur", "sample_coin", "sample_color_jitter", "sample_crop",
    "sample_flip", "sample_grayscale", "sample_rotation", "sample_solarize",
]
