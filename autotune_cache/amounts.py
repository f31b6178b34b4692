"""Amounts in words, one way for every command: bytes in one human unit (`size`), a count with its noun in the
right number (`count`). Text only: `--json` and the records keep raw bytes and plain numbers."""
from __future__ import annotations

_UNITS = (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10))


def size(n: int) -> str:
    """Bytes in powers of 1024, named as such (du -h's numbers, IEC names, so no reader wonders whether a "K" is
    1000 or 1024): 525 -> '525 B', 1536 -> '1.5 KiB', 25_400_000 -> '24.2 MiB', 64 << 20 -> '64 MiB'. One decimal
    below 100 of a unit (dropped when it is 0), none above."""
    for unit, shift in _UNITS:
        if abs(n) >= 1 << shift:
            value = n / (1 << shift)
            text = f"{value:.0f}" if abs(round(value, 1)) >= 100 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} B"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 unit', '2 units', '0 units'; `plural` where adding an s is wrong: count(1, "entry", "entries")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
