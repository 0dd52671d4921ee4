"""What the Library view lists: the :mod:`app.core.library` service (checkpoints in the Hugging Face cache and the
demo, GGUFs under the models folder and the user's extra folders/files, grouped by model), re-exported for the
views."""
from __future__ import annotations

from app.core.library import (  # noqa: F401 - re-exported for the views
    REFERENCE_ORDER,
    CheckpointEntry,
    GgufEntry,
    ModelGroup,
    delete_checkpoint,
    delete_gguf,
    group_key,
    made_by_us,
    make_folders,
    output_path,
    read_gguf_entry,
    remove_empty_folders,
    scan,
)
