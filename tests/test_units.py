"""The one formatter for bytes and the one for counts: binary units for memory (1 KiB =
1024 bytes), decimal multiples for parameters and MACs as the notes write them (3.2M)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnncli.render.units import binary_bytes, human


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.00 KiB"),
    (4 * 15_237_608, "58.13 MiB"), (4 << 30, "4.00 GiB"), (3 * 2**40, "3.00 TiB"),
    (1536.4, "1.50 KiB"), (-2048, "-2.00 KiB"),
])
def test_binary_bytes_in_tables_keeps_two_decimals(n: float, shown: str) -> None:
    assert binary_bytes(n) == shown


@pytest.mark.parametrize(("n", "shown"), [
    (1000, "1000 bytes"), (3072, "3 KiB"), (1 << 20, "1 MiB"), (4 << 30, "4 GiB"),
    (150_000_000, "143 MiB"), (2**41, "2 TiB"),
])
def test_binary_bytes_short_is_the_wording_of_a_message(n: int, shown: str) -> None:
    assert binary_bytes(n, short=True) == shown


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0"), (999, "999"), (138_357_544, "138.36M"), (15_470_264_320, "15.47G"),
    (1500, "1.50K"), (2.5e12, "2.50T"),
])
def test_human_counts_in_decimal_multiples(n: float, shown: str) -> None:
    assert human(n) == shown


def test_human_appends_its_unit() -> None:
    assert human(3_200_000, "FLOPs") == "3.20MFLOPs"


def test_memory_table_and_analyzer_notes_word_bytes_alike() -> None:
    """`cnncli memory`'s table, its notes and `check --ranks` read one formatter, so the
    same number of bytes is the same text wherever it is printed."""
    from cnncli.cli import memory as memory_command
    from cnncli.render import tables

    assert memory_command.size is binary_bytes
    assert tables.binary_bytes is binary_bytes


def test_units_imports_nothing_but_the_standard_library() -> None:
    code = ("import sys\n"
            "import cnncli.render.units\n"
            "print(sorted(m for m in ('numpy', 'numba', 'rich', 'typer') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
