"""Shared test options and fixtures.

Golden files (tests/golden/) pin what `cnncli check` prints. After an intended change
to the output, regenerate them and review the diff:

    .venv/bin/python -m pytest tests/test_check.py --overwrite-golden
    CNNCLI_OVERWRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_check.py
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--overwrite-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """golden(name, text): compare `text` with tests/golden/<name> exactly (or rewrite it)."""
    overwrite = (request.config.getoption("--overwrite-golden")
                 or os.environ.get("CNNCLI_OVERWRITE_GOLDEN") == "1")

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if overwrite:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.is_file(), f"{path} is missing; run pytest with --overwrite-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, (f"{name} differs from the golden file; if the change is "
                                  "intended, rerun with --overwrite-golden and review the diff")

    return check
