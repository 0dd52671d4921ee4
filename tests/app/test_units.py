"""app.core.units.format_size: the one way sizes are written (decimal units), and no other left in app/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.core.units import format_size

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1499, "1.5 kB"), (999_949, "999.9 kB"), (999_950, "1.0 MB"),
    (105_453_984, "105.5 MB"), (270_885_792, "270.9 MB"), (999_949_999, "999.9 MB"), (999_950_000, "1.00 GB"),
    (1_500_000_000, "1.50 GB"), (4 * 2**40, "4.40 TB"), (5e16, "50000.00 TB"), (-2048, "-2.0 kB"),
])
def test_format_size(n, text):
    assert format_size(n) == text


def test_no_binary_units_or_private_formatters_left_in_the_app():
    """Sizes were shown as MiB in one view and MB in another: every size now goes through format_size."""
    offenders = []
    for f in sorted(set(APP.rglob("*.py")) - {APP / "core" / "units.py"}):
        src = f.read_text(encoding="utf-8")
        for pat in (r"\b[KMGT]iB\b", r"2 ?\*\* ?(20|30|40)\b", r"/ ?1e[69]:\.\d?f} ?[MG]B",
                    r"def (_size|human_size)\("):
            offenders += [f"{f.relative_to(APP)}: {m.group(0)}" for m in re.finditer(pat, src)]
    assert offenders == []
