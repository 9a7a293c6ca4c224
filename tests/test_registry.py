"""Every extensible family (augmentation ops, methods, data sources, export formats) is one `Registry`."""

from __future__ import annotations

import pytest

from hicl.errors import HiclError
from hicl.registry import Registry


def _families() -> dict[str, Registry]:
    from hicl.augment.ops import OPS
    from hicl.data import SOURCES
    from hicl.export import EXPORTERS
    from hicl.methods import METHODS

    return {"augmentation op": OPS, "method": METHODS, "data source": SOURCES, "format": EXPORTERS}


@pytest.mark.parametrize("kind", ["augmentation op", "method", "data source", "format"])
def test_each_family_refuses_a_second_member_of_a_name_and_names_the_known_ones(kind):
    registry = _families()[kind]
    assert isinstance(registry, Registry) and registry.kind == kind
    first = registry.names()[0]
    with pytest.raises(ValueError, match=f"{kind} '{first}' is registered twice"):
        registry.register(first, registry[first])
    with pytest.raises(HiclError) as error:
        registry["no-such-member"]
    assert str(error.value) == f"unknown {kind} 'no-such-member'; expected one of {', '.join(registry.names())}"


def test_the_families_hold_what_hicl_ships():
    families = _families()
    assert set(families["method"]) == {"simsiam", "byol", "barlow_twins", "simclr", "moco_v2"}
    assert set(families["data source"]) >= {"synthetic", "folder", "webdataset"}
    assert dict(families["format"].items()).keys() == {"timm", "torchvision", "detectron2", "onnx", "hicl"}


def test_a_method_class_with_a_taken_name_is_refused():
    from hicl.methods import METHODS
    from hicl.methods.registry import register

    taken = METHODS["simsiam"]
    copy = type("AnotherSimSiam", (taken,), {})
    with pytest.raises(ValueError, match="method 'simsiam' is registered twice"):
        register(copy)
    assert METHODS["simsiam"] is taken
