"""numpy GGML block kernels, bit-exact with ggml's reference encoders.

Public API::

    quantize(x, qtype, *, imatrix=None, threads=None) -> uint8 (rows, row_bytes)
    dequantize(data, qtype, shape) -> float32 array of ``shape``
    row_bytes(qtype, n_per_row) -> int

``qtype`` is a ``gguf.GGMLQuantizationType``, its name (``"Q4_K"``) or its integer value.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from . import float_types, legacy, q2k, q3k, q4k5k, q6k  # noqa: F401  (register the kernels)
from .base import Kernel, get_kernel, supported_types
from .errors import ImatrixError, KernelError, NonFiniteError, ShapeError, UnsupportedTypeError

__all__ = [
    "GGMLQuantizationType", "ImatrixError", "Kernel", "KernelError", "NonFiniteError", "ShapeError",
    "UnsupportedTypeError", "dequantize", "get_kernel", "quantize", "row_bytes", "supported_types",
]


def quantize(x: np.ndarray, qtype: GGMLQuantizationType | str | int, *, imatrix: np.ndarray | None = None,
             threads: int | None = None) -> np.ndarray:
    """Quantize float32 ``x`` of shape ``(rows, n_per_row)`` to ggml blocks; returns uint8 ``(rows, row_bytes)``.

    ``imatrix`` (one non-negative importance weight per column) selects ggml's importance-weighted encoders for
    the types that have one; types without one ignore it, as ggml does.  ``threads`` splits rows across a
    thread pool (default: all cores).
    """
    return get_kernel(qtype).quantize(x, imatrix=imatrix, threads=threads)


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType | str | int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode ggml blocks back to float32 of ``shape`` (last axis = values per row)."""
    return get_kernel(qtype).dequantize(data, shape)


def row_bytes(qtype: GGMLQuantizationType | str | int, n_per_row: int) -> int:
    """Bytes of one quantized row of ``n_per_row`` values (raises ShapeError if not a block multiple)."""
    return get_kernel(qtype).row_bytes(n_per_row)
