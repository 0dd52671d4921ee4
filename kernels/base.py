"""The shape of every kernel: one small class per GGML type, registered by ``__init_subclass__``.

The base class validates input and splits rows across threads (float warnings are silenced: ggml's overflow
and NaN edge cases are reproduced, not reported); a subclass implements only

* ``_quantize_rows(x, imatrix)``: ``x`` float32 ``(rows, n_per_row)`` (C-contiguous, finite, ``n_per_row`` a
  multiple of ``block_size``), ``imatrix`` float32 ``(n_per_row,)`` or ``None`` -> uint8 ``(rows, row_bytes)``
  (or only ``_encode_rows``, the same for a chunk of rows, see below);
* ``_dequantize_blocks(blocks)``: uint8 ``(n_blocks, type_size)`` -> float32 ``(n_blocks, block_size)``.

Bit-exactness with ggml rests on three rules the subclasses follow:
1. every float op in float32 (numpy scalars/arrays of dtype float32, never Python floats mixed in unless they
   are exactly representable and the op's result type stays float32);
2. sums that ggml accumulates sequentially are accumulated sequentially (``_prims.seq_sum``: element after
   element, vectorised across blocks), never ``np.sum`` (pairwise) or ``@``;
3. ggml's rounding and its comparisons (NaN, ties, signed zeros) as ``_prims`` spells them out.
Two helpers cut the work into cache-sized chunks: :meth:`Kernel._by_rows` (encoders that need whole rows)
and :meth:`Kernel._by_blocks`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType as QT

from .errors import ImatrixError, NonFiniteError, ShapeError, UnsupportedTypeError

_REGISTRY: dict[QT, type[Kernel]] = {}

# Rows per work item when threads > 1: large enough to amortise numpy's per-call overhead.
_MIN_ROWS_PER_TASK = 16


class Kernel:
    qtype: ClassVar[QT]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    uses_imatrix: ClassVar[bool] = False

    def __init_subclass__(cls, qtype: QT, block_size: int, type_size: int, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.qtype, cls.block_size, cls.type_size = qtype, block_size, type_size
        _REGISTRY[qtype] = cls

    # ---- to implement -------------------------------------------------------------------------------------
    # Either _quantize_rows, or _encode_rows(rows, imatrix) -> the rows' blocks, which the default
    # _quantize_rows runs over chunks of whole rows of about ``chunk_values`` values.
    chunk_values: ClassVar[int] = 1 << 19

    @classmethod
    def _quantize_rows(cls, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return cls._by_rows(x, imatrix, cls._encode_rows, cls.chunk_values)

    @classmethod
    def _encode_rows(cls, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------------
    @classmethod
    def row_bytes(cls, n_per_row: int) -> int:
        if n_per_row % cls.block_size:
            raise ShapeError(
                f"{cls.qtype.name}: a row of {n_per_row} values is not a multiple of the block size "
                f"{cls.block_size}; choose a type with a smaller block (e.g. Q8_0/Q5_0/F16) for this tensor")
        return n_per_row // cls.block_size * cls.type_size

    @classmethod
    def quantize(cls, x: np.ndarray, *, imatrix: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        x = _check_input(cls, x)
        rows, n = x.shape
        out_bytes = cls.row_bytes(n)
        qw = _check_imatrix(imatrix, n) if cls.uses_imatrix else None
        if rows == 0:
            return np.zeros((0, out_bytes), np.uint8)
        threads = _resolve_threads(threads)
        if threads <= 1 or rows < 2 * _MIN_ROWS_PER_TASK:
            with np.errstate(all="ignore"):
                return cls._quantize_rows(x, qw)
        out = np.empty((rows, out_bytes), np.uint8)
        step = max(_MIN_ROWS_PER_TASK, -(-rows // (threads * 4)))

        def work(r0: int) -> None:
            with np.errstate(all="ignore"):     # numpy's error state is per thread
                out[r0:r0 + step] = cls._quantize_rows(x[r0:r0 + step], qw)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(0, rows, step)))
        return out

    @classmethod
    def dequantize(cls, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        if not shape:
            raise ShapeError("dequantize needs a non-empty shape, e.g. (rows, n_per_row)")
        n_per_row = shape[-1]
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        nbytes = rows * cls.row_bytes(n_per_row)
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if raw.size != nbytes:
            raise ShapeError(f"{cls.qtype.name}: {raw.size} bytes given, {nbytes} expected for shape {shape}")
        blocks = raw.reshape(-1, cls.type_size)
        with np.errstate(all="ignore"):         # an fp16 scale of inf decodes to inf/NaN, as in ggml
            return cls._dequantize_blocks(blocks).reshape(shape)

    # ---- chunking helpers for subclasses ------------------------------------------------------------------
    @classmethod
    def _by_rows(cls, x: np.ndarray, imatrix: np.ndarray | None, encode, values: int) -> np.ndarray:
        """``encode(rows, imatrix)`` (-> the rows' blocks, any shape) over chunks of whole rows of about
        ``values`` values (at least one row): bounded temporaries, and arrays long enough for numpy."""
        rows, n = x.shape
        step = max(1, values // n)
        if rows <= step:
            return encode(x, imatrix).reshape(rows, -1)
        out = np.empty((rows, cls.row_bytes(n)), np.uint8)
        for r0 in range(0, rows, step):
            out[r0:r0 + step] = encode(x[r0:r0 + step], imatrix).reshape(-1, out.shape[1])
        return out

    @classmethod
    def _by_blocks(cls, x: np.ndarray, imatrix: np.ndarray | None, encode, blocks: int) -> np.ndarray:
        """``encode(xb, qw, out)`` over chunks of ``blocks`` blocks (a chunk may start mid-row): ``xb`` float32
        ``(m, block_size)``, ``qw`` the imatrix columns of each block ``(m, block_size)`` or None, ``out``
        the chunk's uint8 ``(m, type_size)`` to fill."""
        per_row = x.shape[1] // cls.block_size
        xb = x.reshape(-1, cls.block_size)
        nb = xb.shape[0]
        qw = None if imatrix is None else imatrix.reshape(per_row, cls.block_size)
        out = np.empty((nb, cls.type_size), np.uint8)
        for b0 in range(0, nb, blocks):
            b1 = min(nb, b0 + blocks)
            qwc = None if qw is None else qw[np.arange(b0, b1) % per_row]
            encode(xb[b0:b1], qwc, out[b0:b1])
        return out.reshape(x.shape[0], -1)


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    return int(threads)


def _check_input(cls: type[Kernel], x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{cls.qtype.name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ShapeError(f"{cls.qtype.name}: expected float32 data, got {x.dtype}; convert with x.astype(np.float32)")
    if x.ndim != 2:
        raise ShapeError(f"{cls.qtype.name}: expected a 2-D array (rows, n_per_row), got shape {x.shape}")
    cls.row_bytes(x.shape[1])
    if x.size and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise NonFiniteError(
            f"{cls.qtype.name}: the data holds NaN or Inf (first at row {bad[0]}, column {bad[1]}); "
            "fix or drop the offending weights before quantizing")
    return np.ascontiguousarray(x)


def _check_imatrix(imatrix: np.ndarray | None, n_per_row: int) -> np.ndarray | None:
    if imatrix is None:
        return None
    qw = np.asarray(imatrix)
    if qw.ndim != 1 or qw.shape[0] != n_per_row:
        raise ImatrixError(f"imatrix must hold one weight per column ({n_per_row}), got shape {qw.shape}; "
                           "was it computed for another tensor?")
    if not np.issubdtype(qw.dtype, np.floating):
        raise ImatrixError(f"imatrix must be floating point, got {qw.dtype}")
    qw = np.ascontiguousarray(qw, dtype=np.float32)
    if not np.isfinite(qw).all():
        raise ImatrixError("imatrix holds NaN or Inf; recompute it")
    if (qw < 0).any():
        raise ImatrixError("imatrix holds negative weights; importance weights are sums of squares and must be >= 0")
    return qw


def get_kernel(qtype: QT | str | int) -> type[Kernel]:
    """Look up the kernel for ``qtype`` (an enum member, its name like ``"Q4_K"``, or its integer value)."""
    try:
        if isinstance(qtype, str):
            qt = QT[qtype.upper()]
        else:
            qt = QT(int(qtype))
    except (KeyError, ValueError):
        qt = None
    if qt is None or qt not in _REGISTRY:
        names = ", ".join(t.name for t in _REGISTRY)
        raise UnsupportedTypeError(f"unsupported quantization type {qtype!r}; supported: {names}")
    return _REGISTRY[qt]


def supported_types() -> list[QT]:
    return list(_REGISTRY)
