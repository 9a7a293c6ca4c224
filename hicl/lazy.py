"""`lazy_import`: a module object that loads the real module on first attribute access.

Modules whose *definitions* the manifest needs (an augmentation op's config, say) but whose *work*
needs torch use `torch = lazy_import("torch")`, so that `hicl validate`, `hicl schema` and every
error path answer without paying the seconds torch takes to load. A module that subclasses a torch
class cannot be lazy this way; keep such classes out of the manifest's import path instead.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """`name` as a module that is executed when an attribute of it is first read.

    Only top-level packages can be lazy (finding a submodule imports its parents); reach submodules
    through attributes at call time, e.g. `torch.nn.functional.pad`.
    """
    if "." in name:
        raise ValueError(f"lazy_import takes a top-level package, not {name!r}")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
