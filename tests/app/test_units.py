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


def test_parameter_counts_have_one_format():
    """'135M' and '1.78B' everywhere (the Quantize dialog said '0.13 B', the Download dialog '1.78B'); the
    catalog's own labels agree with it."""
    from app.core import catalog
    from app.core.units import format_params

    assert [format_params(n) for n in (134_515_008, 1_777_088_000, 14_770_033_664, 70_553_706_496, 999_600_000)] \
        == ["135M", "1.78B", "14.8B", "70.6B", "1.00B"]
    for m in catalog.load_catalog():
        assert format_params(m.n_params) == m.params_label, m.repo_id
