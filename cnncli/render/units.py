"""Numbers with units, as every command prints them: one formatter for bytes, one for counts.

Pure Python (no numpy, no rich), so the analyzer and the data readers can word their
messages with it as cheaply as the tables do.
"""

from __future__ import annotations

_BINARY = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
_DECIMAL = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def binary_bytes(n: float, *, short: bool = False) -> str:
    """Bytes in binary units, stated: 1 KiB = 1024 bytes, 1 MiB = 2**20, 1 GiB = 2**30.

    Tables and reports keep two decimals, so a column reads evenly ("58.13 MiB", "512 B");
    `short` is the wording of a one-line message: three significant digits and the word
    spelled out ("3 KiB", "4 GiB", "1000 bytes").
    """
    for factor, suffix in _BINARY:
        if abs(n) >= factor:
            return f"{n / factor:.3g} {suffix}" if short else f"{n / factor:.2f} {suffix}"
    return f"{n:.0f} bytes" if short else f"{n:.0f} B"


def human(n: float, unit: str = "") -> str:
    """3.2M-style figures as the notes write them (decimal multiples)."""
    for factor, suffix in _DECIMAL:
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"
