"""The README stays true where it can be derived: its "what runs with what" table is the registries'."""

from __future__ import annotations

import re
from pathlib import Path

from recipeset.registry import what_runs_with_what

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_registries():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- what-runs-with-what:[^\n]*-->\n(.*?)\n<!-- /what-runs-with-what -->", text, re.S)
    assert block is not None, "README lost its generated 'what runs with what' block"
    assert block.group(1) == what_runs_with_what(), "regenerate it with: python -m recipeset.registry"
