"""Self-supervised objectives, one small module each, behind the `Method` interface."""

from hicl.methods.barlow_twins import BarlowTwins
from hicl.methods.base import Method
from hicl.methods.byol import BYOL
from hicl.methods.moco import MoCoV2
from hicl.methods.simclr import SimCLR
from hicl.methods.simsiam import SimSiam

METHODS: dict[str, type[Method]] = {
    "simsiam": SimSiam,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
}

__all__ = ["METHODS", "Method", "SimSiam", "BYOL", "BarlowTwins", "SimCLR", "MoCoV2"]
