"""What the Library view lists: the :mod:`app.core.library` service (checkpoints in the Hugging Face cache and the
demo, GGUFs under the models folder and the user's extra folders/files, grouped by model), re-exported for the
views, plus the one thing the view needs that must not touch the disk: where a recipe's GGUF *would* go."""
from __future__ import annotations

from pathlib import Path

from app.core import paths
from app.core.library import (  # noqa: F401 - re-exported for the views
    REFERENCE_ORDER,
    CheckpointEntry,
    GgufEntry,
    ModelGroup,
    delete_gguf,
    output_path,
    read_gguf_entry,
    scan,
)


def planned_output_path(model: str, recipe: str) -> Path:
    """Where :func:`output_path` will put ``model``'s ``recipe`` GGUF, without creating its folder (the dialog
    shows it while the user is still choosing)."""
    return paths.models_dir() / model / f"{model}-{recipe.upper()}.gguf"
