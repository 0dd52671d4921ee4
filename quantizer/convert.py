"""``convert``: a Hugging Face checkpoint to a GGUF of any recipe, in one streaming pass.

Every check that can fail runs before the first byte is written: the checkpoint's headers, config and tensor
shapes, the recipe, the imatrix, the output path and the free disk, then the tokenizer (while the workers
already quantize the first blocks, which they hold until the header is written).  Header, metadata and tensor
infos come first in the file (all types and sizes are known from the plan), then the tensor data, streamed from
the memory map in blocks of rows, permuted if needed, quantized by :mod:`kernels` and written at its place, by
``threads`` parallel workers (forked processes on Linux, see :mod:`quantizer.stream`): peak memory is a block
or two per worker plus a constant, whatever the model.

Values fed to the quantizer are what llama.cpp's pipeline (``convert_hf_to_gguf.py``, default ``auto`` outtype,
then ``llama-quantize``) would feed it: F16 and BF16 weights exactly, F32 weights rounded through F16 for the
quantized types (the auto outtype of an F32 checkpoint is F16); float recipes take the weights directly.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as V

from . import arch as archmod
from .checkpoint import Checkpoint, model_name, resolve_source
from .errors import (
    NotEnoughDiskError,
    OutputIsInputError,
    OutputNotWritableError,
)
from .model_card import model_card_kv
from .recipes import FLOAT_RECIPES, QUANTIZATION_VERSION, TensorInfo, plan, with_types
from .stream import ConvertProgress, TensorStream
from .tokenizer import export_vocab
from .writer import StreamingGGUFWriter

log = logging.getLogger(__name__)

_HEADER_MARGIN = 64 * 1024 * 1024  # room for the header (vocab, merges, template) on top of the tensor data


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    n_bytes: int  # size of the GGUF file
    bits_per_weight: float  # tensor data bits / number of weights (as llama.cpp reports it)
    seconds: float
    tensor_types: dict[str, str]  # GGUF tensor name -> GGML type name


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], recipe: str, *, threads: int | None = None,
            imatrix: str | os.PathLike[str] | None = None, progress: Callable[[ConvertProgress], None] | None = None,
            cancel: threading.Event | None = None, pre_tokenizer: str | None = None,
            tensor_types: dict[str, str] | None = None) -> ConvertResult:
    """Convert checkpoint ``src`` (folder or cached Hub repo id) to the GGUF ``out`` with ``recipe``.

    Raises a :class:`~quantizer.errors.QuantizerError` subclass for bad input (before writing anything) and
    :class:`~quantizer.errors.ConversionCancelled` when ``cancel`` is set; neither leaves a file at ``out``
    nor a temporary file beside it.  ``tensor_types`` replaces the recipe's type of the named tensors (a placed
    recipe's plan, see :mod:`quantizer.sensitivity`); the file type stays the recipe's.
    """
    t0 = time.perf_counter()
    folder = resolve_source(src)
    out = Path(out).expanduser().absolute()
    with Checkpoint(folder) as ckpt:
        arch = archmod.get_arch(ckpt.config)
        cfg = archmod.resolve_config(arch, ckpt.config)
        tensors = archmod.plan_tensors(arch, cfg, {n: e.shape for n, e in ckpt.tensors.items()})
        im = _load_imatrix(imatrix)
        p = plan(recipe, [TensorInfo(t.name, t.shape) for t in tensors], archmod.model_params(arch, cfg),
                 has_imatrix=im is not None)
        if tensor_types:
            p = with_types(p, [TensorInfo(t.name, t.shape) for t in tensors], tensor_types)
        _check_output(out, ckpt, p.n_bytes)
        if p.recipe not in FLOAT_RECIPES:  # llama-quantize writes the tensors in its loader's order
            tensors = sorted(tensors, key=_llama_quantize_order)
        from kernels import row_bytes

        sizes = {t.name: _nbytes(row_bytes, t.shape, p.types[t.name]) for t in tensors}
        with StreamingGGUFWriter(out, arch.name) as w:
            for t in tensors:
                w.add_tensor_info(t.name, t.shape, p.types[t.name], sizes[t.name])
            card_kv = model_card_kv(folder, arch.name, w.parameter_count(), name_folder=model_name(src))
            w.create()
            # the workers start on the first blocks now; the tokenizer export and the header are built meanwhile
            with TensorStream(w, ckpt, arch, cfg, tensors, p.types, im, threads, progress, cancel) as data:
                vocab_kv = export_vocab(folder, cfg, arch, pre_tokenizer=pre_tokenizer)
                _add_metadata(w, arch, cfg, p, card_kv, vocab_kv, im, imatrix)
                del vocab_kv
                w.begin()
                data.run()
            w.commit()
    n_weights = sum(int(np.prod(t.shape)) for t in tensors)
    data = sum(sizes.values())
    return ConvertResult(path=out, n_bytes=out.stat().st_size, bits_per_weight=data * 8 / max(n_weights, 1),
                         seconds=time.perf_counter() - t0, tensor_types={n: q.name for n, q in p.types.items()})


def _nbytes(row_bytes: Callable[[QT, int], int], shape: tuple[int, ...], qtype: QT) -> int:
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * row_bytes(qtype, shape[-1])


def _load_imatrix(path: str | os.PathLike[str] | None):  # -> Imatrix | None
    if path is None:
        return None
    from .imatrix import load_imatrix

    return load_imatrix(path)


# ---- output checks ----------------------------------------------------------------------------------------------
def _check_output(out: Path, ckpt: Checkpoint, data_bytes: int) -> None:
    for f in ckpt.input_files():
        if out == f.absolute() or (out.exists() and out.resolve() == f.resolve()):
            raise OutputIsInputError(f"the output {out} is one of the checkpoint's own files; choose another "
                                     f"output path (e.g. in another folder)")
    if out.is_dir():
        raise OutputNotWritableError(f"the output {out} is a folder; give a file name ending in .gguf")
    parent = out.parent
    if not parent.is_dir():
        raise OutputNotWritableError(f"the output folder {parent} does not exist; create it or choose another")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"the output folder {parent} is not writable; choose a folder you can "
                                     f"write to")
    need = data_bytes + _HEADER_MARGIN
    free = shutil.disk_usage(parent).free + (out.stat().st_size if out.is_file() else 0)
    if free < need:
        raise NotEnoughDiskError(f"the GGUF needs about {need / 2**30:.2f} GiB but {parent} has only "
                                 f"{free / 2**30:.2f} GiB free; free some space or choose another output folder")


# ---- metadata -----------------------------------------------------------------------------------------------
def _add_metadata(w: StreamingGGUFWriter, arch: archmod.Arch, cfg: dict, p, card_kv, vocab_kv,
                  im, imatrix_path) -> None:
    """Metadata in the order llama.cpp writes it: the converter's for float recipes (general.type and the model
    card's keys, see :mod:`quantizer.model_card`, then the hyperparameters, then the vocabulary); for quantized ones
    what llama-quantize makes of that (quantization version and file type moved to the end, then the imatrix
    keys)."""
    quantized = p.recipe not in FLOAT_RECIPES
    kvs = [*card_kv, *archmod.hparams_kv(arch, cfg, p.file_type),
           ("general.quantization_version", QUANTIZATION_VERSION, V.UINT32), *vocab_kv]
    if quantized:
        moved = ("general.quantization_version", "general.file_type")
        kvs = [kv for kv in kvs if kv[0] not in moved] + [
            ("general.quantization_version", QUANTIZATION_VERSION, V.UINT32),
            ("general.file_type", p.file_type, V.UINT32)]
    if im is not None and quantized:  # llama-quantize's kv overrides (strings cut at 127 bytes like its buffer)
        kvs.append(("quantize.imatrix.file", str(imatrix_path)[:127], V.STRING))
        if im.datasets:
            kvs.append(("quantize.imatrix.dataset", im.datasets[0][:127], V.STRING))
        kvs.append(("quantize.imatrix.entries_count", len(im), V.INT32))
        if im.chunk_count > 0:
            kvs.append(("quantize.imatrix.chunks_count", im.chunk_count, V.INT32))
    for key, value, vtype in kvs:
        w.add_kv(key, value, vtype)


def _llama_quantize_order(t: archmod.PlannedTensor) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: layer number (-1 outside blocks), then name."""
    m = re.match(r"blk\.(\d+)\.", t.name)
    return (int(m.group(1)) if m else -1, t.name)
