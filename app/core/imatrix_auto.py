"""``--imatrix auto`` / the quantize dialog's "compute": an importance matrix for a checkpoint, made on demand.

An importance matrix is computed by running the model, so a checkpoint needs a GGUF of itself first: an F16,
BF16 or Q8_0 file already in the library (``models/<name>/<name>-<TYPE>.gguf``) is used; otherwise a Q8_0 is
made there (it is also the usual reference for Compare).  The matrix comes from
:func:`app.core.imatrix.compute_imatrix` over the built-in calibration text, cached by model and text, so a second
quantization of the same model reuses it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .imatrix import DEFAULT_CHUNK_SIZE, ImatrixProgress, builtin_calibration_text, cache_key, cached_path
from .load_options import LoadOptions

log = logging.getLogger(__name__)

REFERENCE_RECIPES = ("F16", "BF16", "Q8_0")  # what an importance matrix may be computed with, best first
AUTO_RECIPE = "Q8_0"  # made when none exists: half the size of F16, indistinguishable for the imatrix


def reference_gguf(src: str | os.PathLike[str]) -> Path | None:
    """An existing F16/BF16/Q8_0 GGUF of checkpoint ``src`` in the library, or None."""
    from quantizer.checkpoint import model_name

    from .library import output_path

    name = model_name(str(src))
    for recipe in REFERENCE_RECIPES:
        p = output_path(name, recipe)
        if p.is_file():
            return p
    return None


def cached_auto_imatrix(src: str | os.PathLike[str], *, n_chunks: int | None = None,
                        options: LoadOptions | None = None) -> Path | None:
    """The cached importance matrix ``auto`` would use right now, if it exists (nothing computed)."""
    ref = reference_gguf(src)
    if ref is None:
        return None
    key = cache_key(ref, builtin_calibration_text(), chunk_size=DEFAULT_CHUNK_SIZE, n_chunks=n_chunks,
                    options=options)
    p = cached_path(key)
    return p if p.is_file() else None


def auto_imatrix(src: str | os.PathLike[str], *, n_chunks: int | None = None, options: LoadOptions | None = None,
                 threads: int | None = None, progress: Callable[[ImatrixProgress], None] | None = None,
                 convert_progress: Callable[..., None] | None = None, cancel: threading.Event | None = None,
                 notice: Callable[[str], None] | None = None) -> Path:
    """The importance matrix of checkpoint ``src`` over the built-in calibration text (computed or cached)."""
    from .imatrix import compute_imatrix

    ref = ensure_reference(src, threads=threads, progress=convert_progress, cancel=cancel, notice=notice)
    if notice is not None:
        notice(f"importance matrix: running {ref.name} over the built-in calibration text")
    res = compute_imatrix(ref, None, n_chunks=n_chunks, options=options, progress=progress, cancel=cancel)
    return res.path


def ensure_reference(src: str | os.PathLike[str], *, threads: int | None = None,
                     progress: Callable[..., None] | None = None, cancel: threading.Event | None = None,
                     notice: Callable[[str], None] | None = None) -> Path:
    """:func:`reference_gguf`, made (Q8_0, in the library) when there is none."""
    return reference_gguf(src) or _make_reference(src, threads, progress, cancel, notice)


def _make_reference(src, threads, convert_progress, cancel, notice) -> Path:
    import quantizer
    from quantizer.checkpoint import model_name

    from .library import make_folders, output_path, remove_empty_folders

    out = output_path(model_name(str(src)), AUTO_RECIPE)
    if notice is not None:
        notice(f"importance matrix: making {out.name} to run it (kept in the library as a reference)")
    made = make_folders(out.parent)
    try:
        quantizer.convert(src, out, AUTO_RECIPE, threads=threads, progress=convert_progress, cancel=cancel)
    except BaseException:
        remove_empty_folders(made)
        raise
    return out


@dataclass(frozen=True)
class PhaseProgress:
    """Progress of the importance-matrix phase, shaped like quantizer's ConvertProgress (tensor / index / count /
    bytes) so a view that shows conversion progress shows this too."""
    tensor: str
    index: int
    count: int
    bytes_done: int
    bytes_total: int


def convert_with_auto_imatrix(src: str | os.PathLike[str], out: str | os.PathLike[str], recipe: str, *,
                              threads: int | None = None, progress: Callable[..., None] | None = None,
                              cancel: threading.Event | None = None, **kwargs) -> object:
    """:func:`quantizer.convert` with ``imatrix="auto"`` resolved first (the quantize dialog's "compute")."""
    import quantizer

    def on_chunk(p: ImatrixProgress) -> None:
        if progress is not None:
            progress(PhaseProgress(f"importance matrix: chunk {p.chunk}/{p.n_chunks}", p.chunk, p.n_chunks,
                                   p.chunk, p.n_chunks))

    path = auto_imatrix(src, options=LoadOptions(n_threads=threads), threads=threads, progress=on_chunk,
                        cancel=cancel)
    return quantizer.convert(src, out, recipe, threads=threads, imatrix=path, progress=progress, cancel=cancel,
                             **kwargs)


def builtin_chunks(chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """About how many chunks the built-in text holds (3.3 characters per token, as Qwen2/Llama-3 tokenizers give
    on it), for the dialog's time estimate."""
    return max(1, int(len(builtin_calibration_text()) / 3.3) // chunk_size)
