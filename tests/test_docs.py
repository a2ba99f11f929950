"""docs/spec-format.md is the format's contract: its examples must say what the code does.

Every ```yaml block on that page that is a complete spec (an `input:` and a `layers:` key
at the top level) is loaded and checked with the library. It must be a valid net, unless
the line before the block is `<!-- invalid -->`: then it is a deliberate error example
and must be rejected (exit code 1 in `cnncli check`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnncli.analysis.report import analyze
from cnncli.layers import REGISTRY
from cnncli.spec.parse import SpecInvalid, load_spec

SPEC_FORMAT = Path(__file__).resolve().parent.parent / "docs" / "spec-format.md"
INVALID_MARKER = "<!-- invalid -->"


def yaml_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line, body, marked invalid) of every ```yaml block, in page order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            start = i
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
            blocks.append((start + 1, "\n".join(body) + "\n", before == INVALID_MARKER))
        i += 1
    return blocks


def is_complete_spec(body: str) -> bool:
    return bool(re.search(r"^input:", body, re.M) and re.search(r"^layers:", body, re.M))


BLOCKS = [b for b in yaml_blocks(SPEC_FORMAT.read_text(encoding="utf-8"))
          if is_complete_spec(b[1])]


def test_spec_format_page_has_examples_of_both_kinds() -> None:
    assert len(BLOCKS) >= 15
    assert any(invalid for _, _, invalid in BLOCKS)


@pytest.mark.parametrize(("line", "body", "invalid"), BLOCKS,
                         ids=[f"line{line}" for line, _, _ in BLOCKS])
def test_spec_format_example_checks_as_the_page_says(tmp_path: Path, line: int, body: str,
                                                     invalid: bool) -> None:
    path = tmp_path / f"example_line{line}.yaml"
    path.write_text(body, encoding="utf-8")
    if invalid:
        try:
            report = analyze(load_spec(path))
        except SpecInvalid:
            return
        assert not report.valid, f"docs/spec-format.md:{line} is marked invalid but checks valid"
    else:
        report = analyze(load_spec(path))
        assert report.valid, (f"docs/spec-format.md:{line}: "
                              + "; ".join(p.message for p in report.errors))


def test_spec_format_documents_every_layer_type() -> None:
    text = SPEC_FORMAT.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    for kind in REGISTRY:
        assert any(f"`{kind}`" in h for h in headings), f"no section for `{kind}`"


def test_pointers_to_the_docs_name_pages_that_exist() -> None:
    """Docstrings, messages and pages point at pages under docs/, in the repository
    (the format once lived in a shared/ folder outside it)."""
    root = SPEC_FORMAT.parent.parent
    files = [*(root / "cnncli").rglob("*.py"), *(root / "tests").glob("*.py"),
             root / "README.md", *(root / "docs").glob("*.md")]
    pointers = set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        stale = re.findall(r"\bshared/[\w-]+\.md\b", text)
        assert not stale, f"{path.relative_to(root)}: {stale}"
        pointers.update(re.findall(r"\bdocs/[\w-]+\.md\b", text))
    assert "docs/spec-format.md" in pointers
    for pointer in pointers:
        assert (root / pointer).is_file(), pointer
