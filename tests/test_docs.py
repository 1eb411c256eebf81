"""The README is a first screen: short, its methods table generated from the registry, its links alive."""

import re
from pathlib import Path

from gendistill.registry import methods_markdown

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_methods_table_matches_the_registry():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    table = text.split("<!-- methods-table:start -->\n", 1)[1].split("<!-- methods-table:end -->", 1)[0]
    assert table == methods_markdown(), "regenerate the table with `gendistill methods --markdown`"
    assert "pytest" in text  # the test command a newcomer needs


def test_every_local_link_in_the_readme_and_docs_resolves():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
