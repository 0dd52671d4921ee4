"""Sensitivity-placed recipes (``Q2_K_D``, ``Q3_K_D``, ``Q4_K_D``, ``Q5_K_D``): the size of a llama.cpp recipe (or
a size the user names), the bits placed where this model measures sensitive (:mod:`quantizer.sensitivity`).

Needs what an importance matrix needs, a GGUF of the model to read weights from (F16/BF16/Q8_0 in the library,
else a Q8_0 made there) and the importance matrix (given, or computed over the built-in text: cached).  The plan
(:class:`~quantizer.sensitivity.Placement`, its ``summary()`` says which tensors got which type and why) is made
before any quantizing; the GGUF is then the base recipe's with the placed tensor types: standard types, an
ordinary file that stock llama.cpp loads.

Each tensor's proxy error is weighed by the KL divergence its group (category x band of layers) measures on the
reference model by simulated quantization (:mod:`app.core.sensitivity_kl`, minutes: progress, cancel, cached by
model, imatrix and text), and the output matrix and token embedding are placed by their own measured KL.  On
the 1.5B model this took 11.6 min on 2 cores.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .units import format_size

log = logging.getLogger(__name__)

PLACED_RECIPES = {"Q2_K_D": "Q2_K", "Q3_K_D": "Q3_K_M", "Q4_K_D": "Q4_K_M", "Q5_K_D": "Q5_K_M"}


def is_placed(recipe: str) -> bool:
    return str(recipe).upper() in PLACED_RECIPES


@dataclass
class PlacedPlan:
    recipe: str  # "Q3_K_D"
    base_recipe: str  # "Q3_K_M": file type, and the types of the tensors not placed
    placement: object  # quantizer.sensitivity.Placement
    n_bytes: int  # predicted tensor data
    measured: object | None = None  # app.core.sensitivity_kl.MeasuredScales: the KL weights placed with

    @property
    def types(self) -> dict[str, str]:
        return self.placement.types

    def summary(self) -> str:
        head = (f"{self.recipe}: {self.base_recipe}'s file type; block tensors placed by measured sensitivity; "
                f"predicted tensor data {format_size(self.n_bytes)}\n")
        m = self.measured
        if m is not None:
            how = "reused from the cache" if m.cached else "measured"
            head += (f"weights {how}: the KL divergence of {len(m.scales)} tensor groups (category x layer band) "
                     f"and of {', '.join(m.direct) or 'no tensor'} at {sum(len(v) for v in m.direct.values())} "
                     f"types, by simulated quantization on {m.n_tokens} calibration tokens "
                     f"(took {m.seconds / 60:.1f} min)\n")
        else:
            head = head.replace("measured sensitivity", "relative output error (not KL-calibrated)")
        return head + self.placement.summary()


def placed_plan(src: str | os.PathLike[str], recipe: str, *, reference: str | os.PathLike[str],
                imatrix: str | os.PathLike[str] | None, target_bytes: int | None = None,
                cost_cache: str | os.PathLike[str] | None = None, measure: bool = True, threads: int | None = None,
                progress=None, cancel=None) -> PlacedPlan:
    """Plan ``recipe`` (a key of :data:`PLACED_RECIPES`) for checkpoint ``src``: the placed tensors in the bytes
    the base recipe gives them, or in ``target_bytes`` of tensor data in all.

    ``measure``: weigh each tensor's proxy error by the KL its group measures on the reference model
    (:func:`app.core.sensitivity_kl.measure_scales`, minutes; cached), and place the output matrix and token
    embedding too; ``progress`` gets its :class:`~app.core.sensitivity_kl.MeasureProgress`, ``cancel`` stops it
    (SensitivityCancelled, nothing cached).  Without it the plain sum of relative errors is minimised."""
    from quantizer.recipes import ALIGNMENT, plan, tensor_bytes, with_types
    from quantizer.sensitivity import place, tensor_costs

    from .checkpoint_plan import checkpoint_tensors
    from .load_options import LoadOptions
    from .sensitivity_kl import measure_scales

    recipe = recipe.upper()
    base_recipe = PLACED_RECIPES[recipe]
    ck = checkpoint_tensors(src)
    base = plan(base_recipe, ck.tensors, ck.params, has_imatrix=imatrix is not None)
    costs = tensor_costs(reference, imatrix, cache=cost_cache)
    measured, weights = None, None
    if measure:
        measured = measure_scales(reference, imatrix, costs, options=LoadOptions(n_threads=threads),
                                  threads=threads, progress=progress, cancel=cancel)
        costs, weights = measured.calibrated(costs)
    by_name = {t.name: t for t in ck.tensors}

    def padded(name: str, qtype) -> int:
        return -(-tensor_bytes(by_name[name], qtype) // ALIGNMENT) * ALIGNMENT

    block = {n: c for n, c in costs.items() if n in by_name and n in base.types and base.types[n].name in c.errors}
    budget = sum(padded(n, base.types[n]) for n in block)
    if target_bytes is not None:
        budget += target_bytes - base.n_bytes
    placement = place(block, {n: base.types[n].name for n in block}, budget,
                      weights={n: weights[n] for n in block} if weights is not None else None)
    final = with_types(base, ck.tensors, placement.types)
    return PlacedPlan(recipe, base_recipe, placement, final.n_bytes, measured)


def cost_cache_for(reference: Path, imatrix: Path | None) -> Path:
    """Where the measured costs of ``reference`` with ``imatrix`` are kept (keyed by both files)."""
    import hashlib

    from .paths import cache_dir

    ident = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (reference, imatrix) if p)
    d = cache_dir() / "sensitivity"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def plan_for_checkpoint(src: str | os.PathLike[str], recipe: str, *, imatrix: str | os.PathLike[str] | None = None,
                        threads: int | None = None, target_bytes: int | None = None, progress=None,
                        cancel=None) -> tuple[PlacedPlan, Path]:
    """Everything a *_D recipe needs for checkpoint ``src``, made or reused: the reference GGUF, the importance
    matrix (``imatrix``, else computed over the built-in text) and the measured costs; returns the plan and the
    importance matrix to quantize with (the quantize dialog's "Plan by sensitivity")."""
    from .imatrix_auto import PhaseProgress, auto_imatrix, ensure_reference
    from .load_options import LoadOptions

    def on_chunk(p) -> None:
        if progress is not None:
            progress(PhaseProgress(f"importance matrix: chunk {p.chunk}/{p.n_chunks}", p.chunk, p.n_chunks,
                                   p.chunk, p.n_chunks))

    ref = ensure_reference(src, threads=threads, cancel=cancel)
    im = Path(imatrix) if imatrix is not None else auto_imatrix(src, options=LoadOptions(n_threads=threads),
                                                                  threads=threads, progress=on_chunk, cancel=cancel)
    if progress is not None:
        progress(PhaseProgress("measuring each tensor's error at each type", 0, 1, 0, 1))

    def on_measure(p) -> None:
        if progress is not None:
            eta = f", about {p.eta / 60:.0f} min left" if p.eta is not None and p.step < p.n_steps else ""
            progress(PhaseProgress(f"measured sensitivity: {p.label} ({p.step}/{p.n_steps}){eta}", p.step,
                                   p.n_steps, p.step, p.n_steps))

    pp = placed_plan(src, recipe, reference=ref, imatrix=im, target_bytes=target_bytes,
                     cost_cache=cost_cache_for(ref, im), threads=threads, progress=on_measure, cancel=cancel)
    return pp, im
