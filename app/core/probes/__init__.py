"""Probes: the same questions across subjects, in fresh contexts, on several GGUFs (fp16 and its quantizations).

``probeset`` (the TOML set format), ``decoder`` (several probes decoded at once, one sequence each), ``runner``
(a resumable run over models, then the judge), ``heuristics`` (refusal, answer extraction), ``judge``
(grammar-constrained scores), ``penalty`` (the overthinking penalty), ``store`` (SQLite), ``summary`` (rates with
confidence intervals, export).  The built-in sets live in ``resources/probes/``.
"""
from __future__ import annotations

from pathlib import Path

from ..paths import resources_dir


def builtin_sets() -> list[Path]:
    """The probe sets shipped with the app (``resources/probes/*.toml``), in name order."""
    return sorted((resources_dir() / "probes").glob("*.toml"))
