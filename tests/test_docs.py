"""Documentation generated from the code stays in step with it."""

from __future__ import annotations

from pathlib import Path

from hicl.manifest_docs import manifest_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_manifest_reference_is_current():
    # regenerate with: hicl schema --markdown > docs/manifest.md
    assert (DOCS / "manifest.md").read_text() == manifest_markdown(), "docs/manifest.md is stale"


def test_manifest_reference_names_every_data_source():
    from hicl.data import SOURCES

    text = manifest_markdown()
    assert all(f"`source: {name}`" in text for name in SOURCES)
