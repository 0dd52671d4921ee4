"""Conversions that never finished: the temporary ``.NAME.PID.XXXXXXXX.partial`` files a killed ``quantize`` left in
the models folder (a process killed outright cannot remove its own).  Listed by ``distilldesk models`` (and meant
for the Library) until the next conversion into that folder removes them (:mod:`quantizer.writer`)."""
from __future__ import annotations

from pathlib import Path

from quantizer.writer import PartialFile, partial_files

from .paths import models_dir

__all__ = ["PartialFile", "unfinished_outputs"]


def unfinished_outputs(root: Path | None = None) -> list[PartialFile]:
    """Our partial files in the models folder and its model folders (one level down), oldest name first."""
    root = models_dir() if root is None else Path(root)
    folders = [root]
    try:
        folders += sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        pass
    return [f for folder in folders for f in partial_files(folder)]
