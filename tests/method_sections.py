"""Test helper: a `method` manifest section for any registered method, from a superset of keys."""

from __future__ import annotations

from typing import Any

from hicl.methods import METHODS


def method_section(name: str, **values: Any) -> dict[str, Any]:
    """`{"name": name, ...}` with those of `values` that the method's config has (the others dropped)."""
    fields = METHODS[name].Config.model_fields
    return {"name": name, **{k: v for k, v in values.items() if k in fields}}


def target_methods() -> list[str]:
    return sorted(name for name, cls in METHODS.items() if cls.uses_target)
