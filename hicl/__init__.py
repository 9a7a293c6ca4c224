"""hicl: hierarchical augmentation invariance with expanded views (Zhang & Ma, CVPR 2022).

The Python API (`hicl.pretrain`, `hicl.load_backbone`, `hicl.embed`, `hicl.linear_eval`, `hicl.knn`,
`hicl.probe_invariance`, `hicl.export`, `hicl.list_runs`) lives in `hicl.api` and is loaded on first use,
so that `import hicl` (and the CLI's start-up) does not pay for torch and timm. `hicl.export` is the
`hicl.export` package made callable (`hicl.export(run, out, format)` calls `hicl.api.export`).
"""

from hicl.errors import HiclError

__version__ = "0.1.0"
API = ("pretrain", "load_backbone", "embed", "linear_eval", "knn", "probe_invariance", "list_runs", "resolve_manifest")
__all__ = ["HiclError", "__version__", "export", *API]


def __getattr__(name: str):
    if name == "export":  # the package, callable as the API function
        import importlib

        return importlib.import_module("hicl.export")
    if name in API:
        from hicl import api

        return getattr(api, name)
    raise AttributeError(f"module 'hicl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
