"""What the Quantize dialog shows before any work (Qt-free, run in a worker): every recipe's predicted GGUF size,
bits per weight and RAM needed -- from :func:`app.core.catalog.estimate_all` on the checkpoint's config.json (the
quantizer's own recipe plans) -- and the per-tensor type plan of the checkpoint's real tensor table, which names
what each tensor becomes while the progress streams in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckpointFacts:
    name: str
    n_params: int
    n_layer: int
    n_tensors: int
    estimates: list[Any]  # app.core.catalog.RecipeEstimate, RECIPES order
    types: dict[str, dict[str, Any]]  # recipe -> GGUF tensor name -> GGML type (the plan convert will follow)


def count_merges(folder: Path) -> int:
    """BPE merges in tokenizer.json (they size the GGUF header); 0 when there is none."""
    try:
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        return len((tok.get("model") or {}).get("merges") or [])
    except (OSError, ValueError):
        return 0


def checkpoint_facts(folder: Path, *, n_ctx: int = 4096) -> CheckpointFacts:
    """Predictions for ``folder``.  Raises the quantizer's typed errors for a checkpoint it cannot convert (the
    dialog shows them before any work)."""
    from math import prod

    from app.core.catalog import estimate_all
    from quantizer.arch import get_arch, model_params, plan_tensors, resolve_config
    from quantizer.checkpoint import Checkpoint, model_name
    from quantizer.recipes import RECIPES, TensorInfo, plan

    with Checkpoint(folder) as ck:
        config = dict(ck.config)
        arch = get_arch(config)
        cfg = resolve_config(arch, config)
        planned = plan_tensors(arch, cfg, {n: e.shape for n, e in ck.tensors.items()})
    tensors = [TensorInfo(p.name, tuple(p.shape)) for p in planned]
    params = model_params(arch, cfg)
    types = {name: plan(name, tensors, params).types for name in RECIPES}
    return CheckpointFacts(model_name(folder), sum(prod(t.shape) for t in tensors), params.n_layer, len(tensors),
                           estimate_all(config, n_merges=count_merges(Path(folder)), n_ctx=n_ctx), types)
