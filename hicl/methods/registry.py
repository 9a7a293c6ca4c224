"""The registry of self-supervised methods: `method.name` in a manifest -> the `Method` class.

Each method module decorates its class with `@register`; the name is the default of its config's
`name` literal, so it is spelled once. `hicl.methods` imports every module of the package, so a new
method is one new file. The manifest's `method` section, the CLI and the tests derive from `METHODS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from hicl.methods.base import Method

DEFAULT_METHOD = "simsiam"

METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound="type[Method]")


def method_name(cls: type[Method]) -> str:
    return cls.Config.model_fields["name"].default


def register(cls: M) -> M:
    name = method_name(cls)
    if name in METHODS:
        raise ValueError(f"method {name!r} registered twice ({METHODS[name].__qualname__}, {cls.__qualname__})")
    METHODS[name] = cls
    return cls
