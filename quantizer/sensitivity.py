"""Sensitivity-placed precision: per-tensor types chosen by measured cost to hit a target size (``Q3_K_D`` ...).

llama.cpp's recipes give more bits to a fixed list of tensors (attn_v, ffn_down, the first and last layers).
Here every block matrix gets the standard type that buys the most accuracy per byte, from a measurement on the
model itself:

* **Cost of a type** (:func:`tensor_costs`): the tensor is quantized with each candidate type (Q2_K ... Q8_0, the
  importance matrix guiding the encoders as it does in llama.cpp) on a random sample of its rows, and the
  *relative output error* is measured: ``sum_j a_j * |dW_j|^2 / sum_j a_j * |W_j|^2`` where ``a_j`` is the
  importance matrix (the mean squared activation of input column j) and ``dW_j`` the quantization error of column
  j.  It is the noise-to-signal ratio of the matrix's output ``W x`` over the calibration text (the cross terms
  vanish for uncorrelated inputs): the quantity llama.cpp's imatrix encoders minimise, summed over the tensor.
  ``benchmarks/bench_quality.py`` shows how it tracks the KL divergence measured by llama-perplexity.
* **Placement** (:func:`place`): minimise the summed cost subject to the byte budget (the base recipe's size, or
  a number of bytes) with a Lagrange multiplier found by bisection (each tensor picks the type minimising
  ``cost + lambda * bytes``), then spend what is left on the best remaining upgrades.
* **Weights** (``place(..., weights=)``): a unit of relative error does not cost the same KL everywhere (an
  attn_q's error moves the output far less than an ffn_down's in the last layers).  ``app.core.sensitivity_kl``
  measures the KL of each tensor group by simulated quantization on the model and passes KL per unit of error
  per tensor; the sum minimised is then a predicted KL.  It also prices the output matrix and token embedding
  by their measured KL directly, so they are placed too; without weights they keep the base recipe's type.

The result is an ordinary GGUF of standard types that stock llama.cpp loads; :meth:`Placement.summary` says which
tensors got which type and why.  Imports numpy, gguf and kernels only (never llama_cpp).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .recipes import ALIGNMENT

log = logging.getLogger(__name__)
T = GGMLQuantizationType

CANDIDATES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
FALLBACK_CANDIDATES = ("Q4_0", "Q5_0", "Q8_0")  # rows not a multiple of 256
SAMPLE_ROWS = 128
_BLK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def type_bytes(shape: tuple[int, ...], qtype: str) -> int:
    block, size = GGML_QUANT_SIZES[T[qtype]]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * size


@dataclass
class TensorCost:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    errors: dict[str, float]  # candidate type -> relative output error

    def bytes_at(self, qtype: str) -> int:
        return type_bytes(self.shape, qtype)

    @property
    def group(self) -> str:  # "ffn_down", "attn_v", ...
        m = _BLK.match(self.name)
        return m.group(2) if m else self.name


def _sample(t, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``rows`` rows of GGUF tensor ``t`` (F32/F16/BF16/Q8_0 ...) as float32."""
    from gguf.quants import dequantize

    n_rows = int(t.data.shape[0])
    idx = np.sort(rng.choice(n_rows, size=min(rows, n_rows), replace=False))
    data = np.asarray(t.data[idx])
    if t.tensor_type in (T.F32, T.F16):
        return data.astype(np.float32)
    return dequantize(data, t.tensor_type).astype(np.float32).reshape(len(idx), -1)


def _relative_error(x: np.ndarray, qtype: str, a: np.ndarray | None) -> float:
    import kernels

    d = kernels.dequantize(kernels.quantize(x, qtype, imatrix=a, threads=1), qtype, x.shape)
    w = np.ones(x.shape[1], np.float64) if a is None else a.astype(np.float64)
    err = float(np.square(x.astype(np.float64) - d).sum(axis=0) @ w)
    sig = float(np.square(x.astype(np.float64)).sum(axis=0) @ w)
    return err / sig if sig > 0 else 0.0


def tensor_costs(reference_gguf: str | Path, imatrix: str | Path | None, *, rows: int = SAMPLE_ROWS, seed: int = 0,
                 cache: str | Path | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> dict[str, TensorCost]:
    """The relative output error of every block matrix of ``reference_gguf`` (F16/BF16/Q8_0) at each candidate
    type, on ``rows`` sampled rows, weighted by ``imatrix`` (None: unweighted).  ``cache``: a JSON file reused when
    it was made from the same files and settings."""
    import gguf

    from .imatrix import imatrix_for, load_imatrix

    key = {"model": str(reference_gguf), "imatrix": str(imatrix), "rows": rows, "seed": seed, "v": 1}
    if cache is not None and Path(cache).is_file():
        saved = json.loads(Path(cache).read_text())
        if saved.get("key") == key:
            return {n: TensorCost(n, tuple(c["shape"]), c["errors"]) for n, c in saved["costs"].items()}
    im = load_imatrix(imatrix) if imatrix is not None else None
    reader = gguf.GGUFReader(str(reference_gguf))
    todo = [t for t in reader.tensors if _BLK.match(t.name) and len(t.shape) == 2]
    rng = np.random.default_rng(seed)
    out: dict[str, TensorCost] = {}
    for i, t in enumerate(todo):
        shape = (int(t.shape[1]), int(t.shape[0]))
        x = _sample(t, rows, rng)
        a = imatrix_for(im, t.name, shape) if im is not None else None
        cands = CANDIDATES if shape[1] % 256 == 0 else FALLBACK_CANDIDATES
        out[t.name] = TensorCost(t.name, shape, {q: _relative_error(x, q, a) for q in cands})
        if progress is not None:
            progress(i + 1, len(todo), t.name)
    if cache is not None:
        Path(cache).write_text(json.dumps({"key": key, "costs": {n: {"shape": c.shape, "errors": c.errors}
                                                                  for n, c in out.items()}}))
    return out


@dataclass
class Placement:
    types: dict[str, str]  # block tensor -> chosen type
    base_types: dict[str, str]  # what the base recipe gives them
    budget: int  # bytes the block tensors may take
    used: int
    predicted: float  # summed relative output error of the placement
    predicted_base: float  # ... of the base recipe's types
    costs: dict[str, TensorCost] = field(repr=False, default_factory=dict)
    unit: str = "output error"  # what predicted counts: summed relative "output error", or measured-scale "KL"

    def summary(self, top: int = 12) -> str:
        """Which tensors got which type and why (the plan shown before quantizing)."""
        counts: dict[str, int] = {}
        for q in self.types.values():
            counts[q] = counts.get(q, 0) + 1
        lines = [f"sensitivity placement: {len(self.types)} tensors in {self.used / 2**20:.1f} MiB "
                 f"(budget {self.budget / 2**20:.1f} MiB); predicted {self.unit} {self.predicted:.4f} vs "
                 f"{self.predicted_base:.4f} with the base recipe's types",
                 "  types: " + ", ".join(f"{q} x{n}" for q, n in sorted(counts.items()))]
        by_group: dict[str, dict[str, int]] = {}
        for n, q in self.types.items():
            g = by_group.setdefault(self.costs[n].group if n in self.costs else n, {})
            g[q] = g.get(q, 0) + 1
        lines += [f"  {g:<12} " + ", ".join(f"{q} x{c}" for q, c in sorted(qs.items()))
                  for g, qs in sorted(by_group.items())]
        changed = sorted((n for n in self.types if self.types[n] != self.base_types.get(n)),
                         key=lambda n: -abs(self._gain(n)))
        lines.append(f"  {len(changed)} tensors differ from the base recipe; largest effects:")
        for n in changed[:top]:
            c, b, q = self.costs[n], self.base_types[n], self.types[n]
            lines.append(f"    {n:<28} {b} -> {q}: {self.unit} {c.errors.get(b, float('nan')):.5f} -> "
                         f"{c.errors[q]:.5f}, {(c.bytes_at(q) - c.bytes_at(b)) / 2**10:+.0f} KiB")
        return "\n".join(lines)

    def _gain(self, n: str) -> float:
        c = self.costs[n]
        return c.errors.get(self.base_types[n], 0.0) - c.errors[self.types[n]]


def _padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _choose(costs: dict[str, TensorCost], lam: float) -> dict[str, str]:
    return {n: min(c.errors, key=lambda q: c.errors[q] + lam * c.bytes_at(q)) for n, c in costs.items()}


def _used(costs: dict[str, TensorCost], types: dict[str, str]) -> int:
    return sum(_padded(costs[n].bytes_at(q)) for n, q in types.items())


def weighted(costs: dict[str, TensorCost], weights: dict[str, float]) -> dict[str, TensorCost]:
    """``costs`` with every tensor's errors multiplied by its weight (tensors without one are left out)."""
    return {n: TensorCost(n, c.shape, {q: e * weights[n] for q, e in c.errors.items()})
            for n, c in costs.items() if n in weights}


def place(costs: dict[str, TensorCost], base_types: dict[str, str], budget: int,
          weights: dict[str, float] | None = None) -> Placement:
    """Types for the tensors in ``costs`` with at most ``budget`` bytes (padded as in the file) and the least
    summed relative error.  ``base_types``: the base recipe's type of each (for the comparison and summary).

    ``weights``: a factor per tensor, the measured KL divergence per unit of its relative error (the scales of
    ``app.core.sensitivity_kl``); the sum minimised is then a predicted KL, and the placement's figures are in KL.
    """
    if weights is not None:
        missing = sorted(set(costs) - set(weights))
        if missing:
            raise ValueError(f"no measured weight for {len(missing)} tensors ({missing[0]} ...); measure again")
        bad = [n for n in costs if not (np.isfinite(weights[n]) and weights[n] >= 0)]
        if bad:
            raise ValueError(f"the measured weight of {bad[0]} is {weights[bad[0]]}; measure again")
        costs = weighted(costs, weights)
    lo, hi = 0.0, 1.0
    while _used(costs, _choose(costs, hi)) > budget and hi < 1e6:  # a lambda that fits the budget
        hi *= 4
    lo = hi / 1e12
    for _ in range(60):  # bisection on log lambda: the smallest lambda that fits
        mid = (lo * hi) ** 0.5
        if _used(costs, _choose(costs, mid)) > budget:
            lo = mid
        else:
            hi = mid
    types = _choose(costs, hi)
    if _used(costs, types) > budget:
        raise ValueError(f"{budget} bytes cannot hold these tensors even at the smallest types; raise the target")
    types = _top_up(costs, types, budget)
    total = sum(c.errors[types[n]] for n, c in costs.items())
    base = sum(c.errors.get(base_types[n], np.nan) for n, c in costs.items())
    return Placement(types, dict(base_types), budget, _used(costs, types), total, base, costs,
                     "KL" if weights is not None else "output error")


def _top_up(costs: dict[str, TensorCost], types: dict[str, str], budget: int) -> dict[str, str]:
    """Spend the bytes the multiplier left over on the upgrades with the best error saved per byte."""
    types = dict(types)
    left = budget - _used(costs, types)
    while True:
        best, best_rate = None, 0.0
        for n, c in costs.items():
            cur = types[n]
            for q, e in c.errors.items():
                extra = _padded(c.bytes_at(q)) - _padded(c.bytes_at(cur))
                if 0 < extra <= left and e < c.errors[cur]:
                    rate = (c.errors[cur] - e) / extra
                    if rate > best_rate:
                        best, best_rate = (n, q, extra), rate
        if best is None:
            return types
        n, q, extra = best
        types[n] = q
        left -= extra
