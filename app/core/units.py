"""How DistillDesk writes sizes: one formatter for the GUI, the CLI and messages.

Decimal units (1 MB = 10**6 bytes, 1 GB = 10**9), as disk makers, the Hugging Face Hub and the issue's size
goals count; never a mix of MiB shown as "MB".
"""
from __future__ import annotations

# unit, digits after the point
_UNITS = (("B", 0), ("kB", 1), ("MB", 1), ("GB", 2), ("TB", 2))


def format_size(n_bytes: float) -> str:
    """``105453984 -> "105.5 MB"``, ``1_500_000_000 -> "1.50 GB"``, ``512 -> "512 B"``; a figure that would
    round to 1000 moves up a unit (``999_960 -> "1.0 MB"``, not ``"1000.0 kB"``)."""
    n = float(n_bytes)
    for i, (unit, digits) in enumerate(_UNITS):
        text = f"{n / 1000**i:.{digits}f}"
        if abs(float(text)) < 1000 or i == len(_UNITS) - 1:
            return f"{text} {unit}"
    raise AssertionError("unreachable")
