"""The names timm can build, read from timm's source files instead of by importing timm.

Importing timm takes seconds (it imports torch and every model module); validating a manifest's
`backbone.name` should not. timm registers each architecture with `@register_model` on a `def NAME(`
in `timm/models/*.py`; scanning those files finds the same names as `timm.list_models()` (a test
checks), in milliseconds. If the scan finds nothing (a timm whose layout changed), timm is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

_REGISTERED = re.compile(r"@register_model\s*\n\s*def\s+([A-Za-z0-9_]+)\s*\(")


@functools.cache
def timm_model_names() -> frozenset[str]:
    """Every architecture name `timm.create_model` accepts (without pretrained tags)."""
    spec = importlib.util.find_spec("timm")
    names: set[str] = set()
    if spec is not None and spec.origin is not None:
        for source in sorted((Path(spec.origin).parent / "models").glob("*.py")):
            names.update(_REGISTERED.findall(source.read_text(encoding="utf-8", errors="replace")))
    if not names:
        import timm

        names.update(timm.list_models())
    return frozenset(names)


def is_timm_model(name: str) -> bool:
    """`timm.is_model`'s answer: the architecture part (before a `.pretrained_tag`) is registered."""
    return name.split(".", 1)[0] in timm_model_names()
