"""Image data: sources (one module each, one registry), decoding workers and device feeding.

Importing this package registers every built-in source; `DataConfig` is the discriminated union of
their configs (on `source`, default `synthetic`) that the manifest's `data` section validates against.
The package itself stays light (the source modules load torch at first use), so that reading a
manifest does not load torch; the loader lives in `hicl.data.loader`, fingerprints in
`hicl.data.fingerprint`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from hicl.data import arrays, folder, synthetic, webdataset  # noqa: F401  (registers the sources)
from hicl.data.base import ImageSet, SkippedImages, SourceConfig
from hicl.data.source import SOURCES, Split


def _source_of(value: Any) -> str:
    # a data section without `source` is the built-in synthetic set, as before sources existed
    if isinstance(value, dict):
        return value.get("source", "synthetic")
    return getattr(value, "source", "synthetic")


DataConfig = Annotated[
    Union[tuple(Annotated[entry.config, Tag(name)] for name, entry in SOURCES.items())],  # noqa: UP007
    Discriminator(
        _source_of,
        custom_error_type="unknown_source",
        custom_error_message=f"unknown data source; expected one of {', '.join(sorted(SOURCES))}",
    ),
]

__all__ = ["SOURCES", "DataConfig", "ImageSet", "SkippedImages", "SourceConfig", "Split"]
