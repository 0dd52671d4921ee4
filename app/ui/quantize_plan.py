"""Predictions shown before quantizing (Qt-free): for each recipe the GGUF's size, bits per weight and the RAM
needed to run it, from the checkpoint's tensor table and :func:`quantizer.recipes.estimate` (no weight is read).

RAM needed is an estimate of what llama.cpp holds while chatting: the weights, the KV cache for the chosen
context in F16, the logits buffer of one batch, and a fixed allowance for compute buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COMPUTE_ALLOWANCE = 64 * 1024 * 1024
_N_BATCH = 512


@dataclass(frozen=True)
class RecipeEstimate:
    recipe: str
    description: str
    size_bytes: int
    bits_per_weight: float
    ram_bytes: int


@dataclass(frozen=True)
class CheckpointFacts:
    name: str
    n_params: int
    n_layer: int
    n_vocab: int
    kv_dim: int  # n_head_kv * head_dim
    n_tensors: int
    estimates: list[RecipeEstimate]
    types: dict[str, dict[str, Any]]  # recipe -> GGUF tensor name -> GGML type (the plan convert will follow)


def kv_cache_bytes(n_layer: int, kv_dim: int, n_ctx: int) -> int:
    return 2 * n_layer * n_ctx * kv_dim * 2  # K and V, F16


def checkpoint_facts(folder: Path, *, n_ctx: int = 4096) -> CheckpointFacts:
    """Tensor table of ``folder`` -> per-recipe predictions.  Raises the quantizer's typed errors for a
    checkpoint it cannot convert (which the dialog shows before any work)."""
    from math import prod

    from quantizer.arch import dims, get_arch, model_params, plan_tensors, resolve_config
    from quantizer.checkpoint import Checkpoint, model_name
    from quantizer.recipes import RECIPES, TensorInfo, plan

    with Checkpoint(folder) as ck:
        arch = get_arch(ck.config)
        cfg = resolve_config(arch, ck.config)
        planned = plan_tensors(arch, cfg, {n: e.shape for n, e in ck.tensors.items()})
    tensors = [TensorInfo(p.name, tuple(p.shape)) for p in planned]
    params = model_params(arch, cfg)
    d = dims(cfg)
    n_params = sum(prod(t.shape) for t in tensors)
    kv = kv_cache_bytes(params.n_layer, d["n_kv"], n_ctx)
    logits = d["n_vocab"] * _N_BATCH * 4
    out, types = [], {}
    for name, info in RECIPES.items():
        p = plan(name, tensors, params)
        types[name] = p.types
        out.append(RecipeEstimate(name, info.description, p.n_bytes, p.bits_per_weight,
                                  p.n_bytes + kv + logits + _COMPUTE_ALLOWANCE))
    return CheckpointFacts(model_name(folder), n_params, params.n_layer, d["n_vocab"], d["n_kv"], len(tensors), out,
                           types)
