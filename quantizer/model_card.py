"""The model's own metadata, as llama.cpp's ``convert_hf_to_gguf.py`` writes it: ``general.sampling.*`` from
``generation_config.json`` and name/basename/finetune/size label/license/base models/datasets/tags/languages from
the model card (``README.md`` front matter), ``config.json``'s ``_name_or_path`` and the folder name.

Derived by gguf-py's own :class:`gguf.metadata.Metadata` (``Metadata.load`` then ``set_gguf_meta_model``, exactly
the converter's ``prepare_metadata``), so names match the converter's for the same folder and card.  One rule of
the pinned converter (llama-cpp-python 0.3.36's gguf-py) is newer than the ``gguf`` wheel: ``repetition_penalty``
is read as ``general.sampling.penalty_repeat`` when ``penalty_repeat`` is absent; it is applied here.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gguf

from .errors import ConfigError

log = logging.getLogger(__name__)

# the files Metadata.load reads from the model folder
CARD_FILES = ("README.md", "config.json", "generation_config.json")
_NUMERIC_SAMPLING = ("top_k", "top_p", "min_p", "xtc_probability", "xtc_threshold", "temp", "penalty_last_n",
                     "penalty_repeat", "mirostat", "mirostat_tau", "mirostat_eta")
_INT_SAMPLING = ("top_k", "penalty_last_n", "mirostat")


def model_card_kv(folder: Path, arch: str, params: tuple[int, int, int, int], *,
                  name_folder: str | None = None) -> list[tuple[str, Any, gguf.GGUFValueType]]:
    """``general.type`` and the converter's model-card keys, in its order, as (key, value, type).

    ``params`` is ``GGUFWriter.get_total_parameter_count()`` of the tensors to write; ``name_folder`` is the folder
    name the converter would have seen (an HF-cache snapshot's folder is a commit hash: give the repo name)."""
    meta = _load(folder, params[0], name_folder)
    if meta.name is None:  # the converter's fallback: the model directory's name
        meta.name = name_folder or folder.name
    if meta.size_label is None and params[0] > 0:
        meta.size_label = gguf.size_label(*params)
    scratch = gguf.GGUFWriter(path=None, arch=arch)
    scratch.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(scratch)
    kv = scratch.kv_data[0]
    return [(k, v.value, v.type) for k, v in kv.items() if k != gguf.Keys.General.ARCHITECTURE]


def _load(folder: Path, total_params: int, name_folder: str | None) -> gguf.Metadata:
    if name_folder is None or name_folder == folder.name:
        return _load_from(folder, total_params)
    with tempfile.TemporaryDirectory(prefix="distilldesk-card-") as tmp:
        view = Path(tmp) / name_folder  # the same files under the name the converter would have seen
        view.mkdir()
        for f in CARD_FILES:
            if (folder / f).is_file():
                shutil.copyfile(folder / f, view / f)
        return _load_from(view, total_params)


def _load_from(folder: Path, total_params: int) -> gguf.Metadata:
    try:
        meta = gguf.Metadata.load(None, folder, None, total_params)
    except Exception as e:  # noqa: BLE001 - yaml/json errors of a hand-edited card; one typed error, one line
        reason = " ".join(str(getattr(e, "problem", None) or e).split())[:160]
        raise ConfigError(f"the model card (README.md) or generation_config.json in {folder} cannot be read "
                          f"({type(e).__name__}: {reason}); fix or remove the file") from None
    gen = _generation_config(folder)
    meta.sampling_penalty_repeat = gen.get("penalty_repeat", gen.get("repetition_penalty",
                                                                    meta.sampling_penalty_repeat))
    for field in _NUMERIC_SAMPLING:  # a value of the wrong type would only fail when the header is packed
        value = getattr(meta, f"sampling_{field}")
        ok = (int,) if field in _INT_SAMPLING else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, ok)):
            log.warning("generation_config.json: ignoring %s=%r (not a number)", field, value)
            setattr(meta, f"sampling_{field}", None)
    if meta.sampling_sequence is not None and not isinstance(meta.sampling_sequence, str):
        meta.sampling_sequence = None
    return meta


def _generation_config(folder: Path) -> dict:
    try:
        gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return gen if isinstance(gen, dict) else {}
