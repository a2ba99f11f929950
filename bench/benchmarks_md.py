"""BENCHMARKS.md is shared by every benchmark script: each owns one section between
`<!-- NAME: start -->` and `<!-- NAME: end -->` markers and rewrites only that."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def replace_section(name: str, section: str) -> None:
    """Replace section `name` (text that starts and ends with its markers), or append it."""
    start, end = markers(name)
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS.write_text(text, encoding="utf-8")
