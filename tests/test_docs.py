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


def test_the_op_example_in_extending_md_is_the_tested_plugin():
    text = (DOCS / "extending.md").read_text()
    marker = "<!-- the file tests/hicl_channel_shuffle.py, run by tests/test_augment_plugins.py -->\n```python\n"
    assert marker in text
    example = text.split(marker, 1)[1].split("```\n", 1)[0]
    assert example == (DOCS.parent / "tests" / "hicl_channel_shuffle.py").read_text()
