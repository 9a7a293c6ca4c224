"""The registry of self-supervised methods: `method.name` in a manifest -> the `Method` class.

Each method module decorates its class with `@register`; the name is the default of its config's
`name` literal, so it is spelled once, and the config must be one of `hicl.methods.configs`.
Reading `hicl.methods.METHODS` imports every module of the package, so `METHODS` is complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from hicl.methods.configs import METHOD_CONFIGS
from hicl.registry import Registry

if TYPE_CHECKING:
    from hicl.methods.base import Method

METHODS: Registry[type[Method]] = Registry("method")

M = TypeVar("M", bound="type[Method]")


def method_name(cls: type[Method]) -> str:
    return cls.Config.model_fields["name"].default


def register(cls: M) -> M:
    name = method_name(cls)
    if METHOD_CONFIGS.get(name) is not cls.Config:
        raise ValueError(f"method {name!r}: its Config must be the one in hicl.methods.configs")
    return METHODS.register(name, cls)
