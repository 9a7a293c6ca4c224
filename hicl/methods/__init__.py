"""Self-supervised objectives, one module each, behind the `Method` interface.

Importing the package imports every module in it, so each method's `@register` runs and `METHODS`
(name -> class) is complete; `method_config_union()` is the manifest's `method` section.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from hicl.methods.base import Method, MethodConfig
from hicl.methods.registry import DEFAULT_METHOD, METHODS, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _method_tag(value: Any) -> str:
    # A section without `name` is the default method, as before the registry existed.
    if isinstance(value, dict):
        return value.get("name", DEFAULT_METHOD)
    return getattr(value, "name", DEFAULT_METHOD)


def method_config_union() -> Any:
    """The pydantic type of the `method` section: a union of every method's config, tagged by `name`."""
    names = sorted(METHODS)
    members = tuple(Annotated[METHODS[name].Config, Tag(name)] for name in names)
    unknown = f"unknown method.name; expected one of {', '.join(names)}"
    tagged = Discriminator(_method_tag, custom_error_type="method_name", custom_error_message=unknown)
    return Annotated[Union[members], tagged]  # noqa: UP007 (a union built at run time)


def default_method_config() -> MethodConfig:
    return METHODS[DEFAULT_METHOD].Config()


__all__ = ["METHODS", "DEFAULT_METHOD", "Method", "MethodConfig", "register", "method_config_union"]
