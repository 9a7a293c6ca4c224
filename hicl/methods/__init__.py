"""Self-supervised objectives, one module each, behind the `Method` interface.

What a manifest says about a method is in `hicl.methods.configs` (torch-free). The method classes
subclass `torch.nn.Module`, so they are imported when `METHODS` or `Method` is first read from this
package, not when a manifest is read: `hicl validate` never loads torch.
"""

from __future__ import annotations

from typing import Any

from hicl.methods.configs import DEFAULT_METHOD, METHOD_CONFIGS, MethodConfig, default_method_config, method_config_union


def __getattr__(name: str) -> Any:
    if name not in ("METHODS", "Method"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from hicl.registry import import_package

    import_package(__name__)
    from hicl.methods.base import Method
    from hicl.methods.registry import METHODS

    globals().update(METHODS=METHODS, Method=Method)
    return globals()[name]


__all__ = [
    "DEFAULT_METHOD", "METHODS", "METHOD_CONFIGS", "Method", "MethodConfig", "default_method_config",
    "method_config_union",
]
