"""What quantizing a checkpoint will make, known before any work: the quantizer's own per-tensor plan
(:func:`quantizer.recipes.plan`) of the checkpoint's real tensor table, the predicted GGUF size (tensor data,
exact, plus the header estimate of :func:`app.core.catalog.header_bytes`), bits per weight, and how many tensors
fall back to another type because their rows do not fit the recipe's block size.

``distilldesk quantize`` prints :meth:`QuantizePlan.summary` before converting; the GUI's quantize dialog reads
the same tensor table (:func:`checkpoint_tensors`).  Read-only: only the checkpoint's config, tokenizer.json and
safetensors headers are read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantizer.recipes import ModelParams, TensorInfo

from .units import format_size


@dataclass(frozen=True)
class CheckpointTensors:
    """A checkpoint as :func:`quantizer.convert` will see it."""

    name: str                      # the model name convert writes as general.name
    folder: Path
    config: dict[str, Any]
    tensors: list[TensorInfo]      # GGUF names and shapes (generated tensors such as rope_freqs included)
    params: ModelParams


@dataclass(frozen=True)
class QuantizePlan:
    name: str
    recipe: str
    size_bytes: int                # predicted GGUF file size
    tensor_bytes: int              # of which tensor data (exact)
    bits_per_weight: float
    n_tensors: int
    n_fallback: int                # tensors meant for a k-quant whose rows are not a multiple of 256 (llama.cpp's
    n_fallback_f16: int = 0        # n_fallback), and of those, ones not even a multiple of 32: stored as F16

    def summary(self) -> str:
        """``SmolLM2-135M-Instruct -> Q4_K_M: predicted 105.5 MB, 6.17 bits per weight, 272 tensors (...)``."""
        line = (f"{self.name} -> {self.recipe}: predicted {format_size(self.size_bytes)}, "
                f"{self.bits_per_weight:.2f} bits per weight, {self.n_tensors} tensors")
        notes = []
        for n, what in ((self.n_fallback - self.n_fallback_f16, "back from k-quants: rows not a multiple of 256"),
                        (self.n_fallback_f16, "back to F16: rows not a multiple of 32")):
            if n:
                notes.append(f"{n} {'falls' if n == 1 else 'fall'} {what}")
        return line + (f" ({'; '.join(notes)})" if notes else "")


def count_merges(folder: Path) -> int:
    """BPE merges in tokenizer.json (they size the GGUF header); 0 when there is none."""
    try:
        tok = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
        return len((tok.get("model") or {}).get("merges") or [])
    except (OSError, ValueError):
        return 0


def checkpoint_tensors(src: str | os.PathLike[str]) -> CheckpointTensors:
    """The tensor table of checkpoint ``src`` (a folder, or a Hub repo id in the local cache).  Raises the
    quantizer's typed errors for a checkpoint it cannot convert (the same ones convert would raise)."""
    from quantizer.arch import get_arch, model_params, plan_tensors, resolve_config
    from quantizer.checkpoint import Checkpoint, model_name, resolve_source

    folder = resolve_source(src)
    with Checkpoint(folder) as ck:
        config = dict(ck.config)
        arch = get_arch(config)
        cfg = resolve_config(arch, config)
        planned = plan_tensors(arch, cfg, {n: e.shape for n, e in ck.tensors.items()})
    return CheckpointTensors(model_name(src), folder, config, [TensorInfo(p.name, tuple(p.shape)) for p in planned],
                             model_params(arch, cfg))


def plan_checkpoint(src: str | os.PathLike[str], recipe: str, *, has_imatrix: bool = False) -> QuantizePlan:
    """What quantizing ``src`` with ``recipe`` will make (see the module docstring)."""
    from quantizer.recipes import plan

    from .catalog import header_bytes

    ck = checkpoint_tensors(src)
    p = plan(recipe, ck.tensors, ck.params, has_imatrix=has_imatrix)
    n_vocab = int(ck.config.get("vocab_size") or 0)
    head = header_bytes(ck.tensors, n_vocab, count_merges(ck.folder))
    n_f16 = sum(p.types[n].name == "F16" for n in p.fallbacks)
    return QuantizePlan(ck.name, p.recipe, head + p.n_bytes, p.n_bytes, p.bits_per_weight, len(ck.tensors),
                        p.n_fallback, n_f16)
