"""What the Quantize dialog shows before any work (Qt-free, run in a worker): every recipe's predicted GGUF size,
bits per weight and RAM needed -- from :func:`app.core.catalog.estimate_all` on the checkpoint's config.json (the
quantizer's own recipe plans) -- and the per-tensor type plan of the checkpoint's real tensor table
(:func:`app.core.checkpoint_plan.checkpoint_tensors`, as ``distilldesk quantize`` reads it), which names what each
tensor becomes while the progress streams in.
"""
from __future__ import annotations

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


def checkpoint_facts(folder: Path, *, n_ctx: int = 4096) -> CheckpointFacts:
    """Predictions for ``folder``.  Raises the quantizer's typed errors for a checkpoint it cannot convert (the
    dialog shows them before any work)."""
    from math import prod

    from app.core.catalog import estimate_all
    from app.core.checkpoint_plan import checkpoint_tensors, count_merges
    from quantizer.recipes import RECIPES, plan

    ck = checkpoint_tensors(folder)
    types = {name: plan(name, ck.tensors, ck.params).types for name in RECIPES}
    return CheckpointFacts(ck.name, sum(prod(t.shape) for t in ck.tensors), ck.params.n_layer, len(ck.tensors),
                           estimate_all(ck.config, n_merges=count_merges(ck.folder), n_ctx=n_ctx), types)
