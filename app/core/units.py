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


def format_params(n: float) -> str:
    """How DistillDesk writes parameter counts, everywhere (the catalog, the dialogs, the CLI): three significant
    figures and a unit glued on, as model cards do: ``134_515_008 -> "135M"``, ``1_777_088_000 -> "1.78B"``,
    ``14_770_033_664 -> "14.8B"``, ``70_553_706_496 -> "70.6B"``."""
    n = float(n)
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale * 0.9995:
            v = n / scale
            digits = 2 if v < 10 else 1 if v < 100 else 0
            return f"{v:.{digits}f}{unit}"
    return f"{n:.0f}"
