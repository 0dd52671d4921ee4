"""The 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (ggml-quants.c, bit for bit).

Block layouts (little-endian, ``d``/``m`` are fp16)::

    Q8_0  d | qs[32] int8                      34 bytes   x = d*q
    Q4_0  d | qs[16] (q[j] | q[j+16] << 4)     18 bytes   x = d*(q-8)
    Q4_1  d | m | qs[16]                       20 bytes   x = d*q + m
    Q5_0  d | qh[4] | qs[16]                   22 bytes   x = d*(q-16), bit 4 of q[j] in bit j of qh
    Q5_1  d | m | qh[4] | qs[16]               24 bytes   x = d*q + m

Without an imatrix ggml uses the ``quantize_row_*_ref`` encoders (one scale from the block's extreme values);
with one, ``quantize_row_*_impl`` search the scale with weights ``qw[j]*sqrt(sigma2 + x[j]^2)``
(``sigma2`` = mean square of the row).  Q8_0 has no weighted encoder: ggml ignores the imatrix.
Work is done on chunks of blocks small enough to stay in L2.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ._packing import get_f16, put_bits, put_f16, put_nibbles, unpack_bits, unpack_nibbles
from ._prims import F32, absmax_rows, clip, first_min, inv, minmax, roundf_inplace, seq_sum, signed_absmax
from .base import Kernel
from .qkx_search import make_qkx3_quants
from .qx_search import make_qx_quants

_CHUNK_BLOCKS = 8192  # 1 MiB of input: numpy's per-call overheads amortised, temporaries still in L2
_IMPL_ROW_ELEMS = 1 << 18
_U8_0 = np.array(0, np.uint8)


# ---- shared pieces -----------------------------------------------------------------------------------------
def _put_qh(out: np.ndarray, col: int, q: np.ndarray) -> None:
    """qh (uint32 LE) = OR of ((q[j] >> 4) & 1) << j over the block's 32 levels."""
    put_bits(out, col, q.reshape(-1, 4, 8), 4)


def _row_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2 = (sequential sum of x^2) / n_per_row``.

    Row sums are sequential sums down the columns of transposed blocks of 32 rows (large enough for long
    inner loops, small enough to transpose in cache; a reduce along the row itself would be pairwise)."""
    w = x * x
    sigma2 = np.empty(x.shape[0], F32)
    for r0 in range(0, x.shape[0], 32):
        seq_sum(np.ascontiguousarray(w[r0:r0 + 32].T), out=sigma2[r0:r0 + 32])
    sigma2 /= F32(x.shape[1])
    w += sigma2[:, None]
    np.sqrt(w, out=w)
    w *= qw
    return w


def _dequant_qh(qh: np.ndarray) -> np.ndarray:
    return unpack_bits(qh).reshape(qh.shape[0], -1) << np.uint8(4)


# ---- Q8_0 --------------------------------------------------------------------------------------------------
def _encode_q8_0(xb: np.ndarray, qw: None, out: np.ndarray) -> None:
    d = absmax_rows(xb) / F32(127)
    t = xb * inv(d)[:, None]
    roundf_inplace(t, np.empty(t.shape, np.uint32))
    np.copyto(out[:, 2:].view(np.int8), t, casting="unsafe")  # float -> int8 truncates, like C
    put_f16(out, 0, d)


class Q8_0(Kernel, qtype=QT.Q8_0, block_size=32, type_size=34):
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return cls._by_blocks(x, None, _encode_q8_0, _CHUNK_BLOCKS)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks[:, 2:].view(np.int8).astype(F32) * get_f16(blocks, 0)


# ---- Q4_0 / Q5_0 / Q4_1 / Q5_1 ------------------------------------------------------------------------------
def _sym_ref(xb: np.ndarray, nhalf: int) -> tuple[np.ndarray, np.ndarray]:
    """d = max/-nhalf; q = MIN(2*nhalf-1, (int8_t)(x*id + nhalf+0.5))."""
    _, mx = signed_absmax(xb, axis=1)
    d = mx / F32(-nhalf)
    t = xb * inv(d)[:, None]
    t += F32(nhalf + 0.5)
    q = t.astype(np.uint8)  # t >= 0.5 - tiny: truncation toward zero as in C
    clip(q, _U8_0, np.array(2 * nhalf - 1, np.uint8), q)   # the clip ufunc: ~20x faster than np.minimum on uint8
    return d, q


def _asym_ref(xb: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d = (max-min)/nmax; q = (int)((x-min)*id + 0.5) (Q4_1 also clamps to 15: a no-op in range)."""
    lo, hi = minmax(xb, axis=1)
    mn = first_min(xb, axis=1, lo=lo)
    d = hi - mn
    d += F32(0)  # ggml's max-min is never -0 (equal extremes are the same element)
    d /= F32(nmax)
    t = xb - mn[:, None]
    t *= inv(d)[:, None]
    t += F32(0.5)
    # no MIN(15, .): with a finite 1/d, (x-min)*id + 0.5 stays below nmax + 1; with 1/d = inf (a subnormal
    # range) numpy's cast of inf/NaN gives what ggml's (int8_t) cast gives on this platform (0 on x86)
    return d, mn, t.astype(np.uint8)


class _Legacy:
    """Q4_0, Q5_0 (``d``, levels ``q - 2^(bits-1)``) and Q4_1, Q5_1 (``d``, ``m``, levels ``q``): the layout is
    ``d | m? | qh? | qs[16]``, the reference encoder works on chunks of blocks, the weighted one
    (make_qx_quants / make_qkx3_quants) on chunks of whole rows (its weights need the row's mean square)."""
    uses_imatrix = True
    bits: int
    has_min: bool

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        if imatrix is None:
            return cls._by_blocks(x, None, cls._encode_ref, _CHUNK_BLOCKS)
        return cls._by_rows(x, imatrix, cls._encode_impl, _IMPL_ROW_ELEMS)

    @classmethod
    def _encode_ref(cls, xb: np.ndarray, qw: None, out: np.ndarray) -> None:
        nmax = (1 << cls.bits) - 1
        if cls.has_min:
            d, mn, q = _asym_ref(xb, nmax)
        else:
            (d, q), mn = _sym_ref(xb, (nmax + 1) // 2), None
        cls._store(out, d, mn, q)

    @classmethod
    def _encode_impl(cls, x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
        nmax = (1 << cls.bits) - 1
        w = _row_weights(x, imatrix).reshape(-1, 32)
        out = np.empty((x.size // 32, cls.type_size), np.uint8)
        if cls.has_min:
            d, the_min, q = make_qkx3_quants(x.reshape(-1, 32), nmax, w)
            cls._store(out, d, -the_min, q)
        else:
            d, L = make_qx_quants(x.reshape(-1, 32), (nmax + 1) // 2, 1, w)
            cls._store(out, d, None, L.view(np.uint8))
        return out

    @classmethod
    def _store(cls, out: np.ndarray, d: np.ndarray, mn: np.ndarray | None, q: np.ndarray) -> None:
        put_f16(out, 0, d)
        col = 2
        if mn is not None:
            put_f16(out, 2, mn)
            col = 4
        if cls.bits == 5:
            _put_qh(out, col, q)
            col += 4
        put_nibbles(out, col, q, 16)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        col = 4 if cls.has_min else 2
        qcol = col + 4 if cls.bits == 5 else col
        q = unpack_nibbles(blocks[:, qcol:], 16)
        if cls.bits == 5:
            q |= _dequant_qh(blocks[:, col:col + 4])
        if cls.has_min:
            return q.astype(F32) * get_f16(blocks, 0) + get_f16(blocks, 2)
        q = q.astype(np.int8) - np.int8(1 << (cls.bits - 1))
        return q.astype(F32) * get_f16(blocks, 0)


class Q4_0(_Legacy, Kernel, qtype=QT.Q4_0, block_size=32, type_size=18):
    bits, has_min = 4, False


class Q5_0(_Legacy, Kernel, qtype=QT.Q5_0, block_size=32, type_size=22):
    bits, has_min = 5, False


class Q4_1(_Legacy, Kernel, qtype=QT.Q4_1, block_size=32, type_size=20):
    bits, has_min = 4, True


class Q5_1(_Legacy, Kernel, qtype=QT.Q5_1, block_size=32, type_size=24):
    bits, has_min = 5, True
