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

from .base import Kernel
from .qx_search import make_qkx3_quants, make_qx_quants, seq_sum0

F32 = np.float32
_CHUNK_BLOCKS = 2048
_IMPL_ROW_ELEMS = 1 << 18
_ROUNDF_HALF = np.uint32(0x3EFFFFFF)  # bits of 0.49999997f, see _roundf_inplace
_SIGN = np.uint32(0x80000000)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_GATHER_BITS = np.uint64(0x0102040810204080)
_U8_0 = np.array(0, np.uint8)
# np.clip's ufunc with 0-d bounds: np.minimum/np.clip with a Python or numpy scalar cost ~20x more here.
_clip = getattr(getattr(np, "_core", None), "umath", np).clip


# ---- shared pieces -----------------------------------------------------------------------------------------
def _minmax(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block min and max of ``xb`` (m, 32).  Reducing along a short contiguous axis is slow in numpy, so
    the block is viewed as 8 lanes of 4 floats (complex128), transposed (cheap: 8 items per row) and reduced
    along the long axis; the 4 lanes are folded at the end.  (The sign of a zero result is not meaningful.)"""
    m = xb.shape[0]
    t = np.ascontiguousarray(xb.view(np.complex128).T).view(F32).reshape(8, m, 4)
    hi, lo = t.max(axis=0), t.min(axis=0)
    hi = np.maximum(np.maximum(hi[:, 0], hi[:, 1]), np.maximum(hi[:, 2], hi[:, 3]))
    lo = np.minimum(np.minimum(lo[:, 0], lo[:, 1]), np.minimum(lo[:, 2], lo[:, 3]))
    return lo, hi


def _signed_absmax(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from 0: first value of largest |x|."""
    lo, hi = _minmax(xb)
    nlo = -lo
    amax = np.maximum(hi, nlo)
    amax += F32(0)  # -0.0 -> +0.0
    mx = np.where(nlo > hi, lo, hi)
    mx += F32(0)
    tie = (hi == nlo) & (hi > 0)
    if tie.any():
        sub = xb[tie]
        mx[tie] = sub[np.arange(len(sub)), np.argmax(np.abs(sub) == amax[tie, None], axis=1)]
    return amax, mx


def _first_min(xb: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """ggml's ``if (v < min) min = v`` keeps the first of equal values: only the sign of a zero min differs."""
    z = lo == 0
    if z.any():
        sub = xb[z]
        lo[z] = sub[np.arange(len(sub)), np.argmax(sub == 0, axis=1)]
    return lo


def _inv(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``"""
    return np.divide(F32(1), d, out=np.zeros_like(d), where=d != 0)


def _roundf_inplace(t: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero) for |t| < 2^22, exactly: ``trunc(t + copysign(0.49999997f, t))``.
    (0.5 itself would misround 0.49999997f, whose sum with 0.5 rounds up to 1.0; with 0.49999997f every
    tie k+0.5 still sums to a value that rounds to k+1.)  The caller truncates by casting to an integer."""
    np.bitwise_and(t.view(np.uint32), _SIGN, out=scratch)
    scratch |= _ROUNDF_HALF
    t += scratch.view(F32)
    return t


def _put_f16(out: np.ndarray, col: int, v: np.ndarray) -> None:
    """fp16 (round to nearest even, like GGML_FP32_TO_FP16) at byte ``col`` (even; block sizes are even)."""
    out.view(np.uint16)[:, col // 2] = v.astype(np.float16).view(np.uint16)


def _put_nibbles(out: np.ndarray, col: int, q: np.ndarray) -> None:
    """qs[j] = (q[j] & 15) | (q[j+16] & 15) << 4 for q uint8 (m, 32), eight bytes at a time: the block is
    viewed as 4 uint64 words (transposed, so each word index is one flat row), the low nibbles of words 2-3
    shifted up by 4 cannot carry into the next byte."""
    t = np.ascontiguousarray(q.view(np.uint64).T)  # (4, m)
    t &= _LOW_NIBBLES
    t[2:] <<= np.uint64(4)
    t[:2] |= t[2:]
    out[:, col:col + 16].view(np.uint64)[...] = t[:2].T


def _put_qh(out: np.ndarray, col: int, q: np.ndarray) -> None:
    """qh (uint32 LE) = OR of ((q[j] >> 4) & 1) << j: per uint64 word of 8 levels, the 0/1 bytes are gathered
    into the top byte by one multiplication (byte k lands on bit 56+k; no two partial products overlap)."""
    b = (q >> np.uint8(4)) & np.uint8(1)
    g = (b.view(np.uint64) * _GATHER_BITS) >> np.uint64(56)
    out[:, col:col + 4] = g.astype(np.uint8)


def _each_chunk(x: np.ndarray, type_size: int, encode) -> np.ndarray:
    """Run ``encode(xb, out)`` over chunks of blocks (xb float32 (m, 32), out uint8 (m, type_size))."""
    xb = x.reshape(-1, 32)
    out = np.empty((xb.shape[0], type_size), np.uint8)
    for b0 in range(0, xb.shape[0], _CHUNK_BLOCKS):
        encode(xb[b0:b0 + _CHUNK_BLOCKS], out[b0:b0 + _CHUNK_BLOCKS])
    return out.reshape(x.shape[0], -1)


def _by_rows(x: np.ndarray, imatrix: np.ndarray, type_size: int, encode) -> np.ndarray:
    """Run the weighted encoder ``encode(rows, imatrix, out_blocks)`` on blocks of whole rows (the weights need
    a row's mean square) of ~1 MB, so that the weights and the search's temporaries stay in cache."""
    rows, n = x.shape
    out = np.empty((rows * n // 32, type_size), np.uint8)
    step = max(1, _IMPL_ROW_ELEMS // n)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        encode(x[r0:r1], imatrix, out[r0 * n // 32:r1 * n // 32])
    return out.reshape(rows, -1)


def _row_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2 = (sequential sum of x^2) / n_per_row``.

    Row sums are sequential sums down the columns of transposed blocks of 32 rows (large enough for long
    inner loops, small enough to transpose in cache; a reduce along the row itself would be pairwise)."""
    w = x * x
    sigma2 = np.empty(x.shape[0], F32)
    for r0 in range(0, x.shape[0], 32):
        seq_sum0(np.ascontiguousarray(w[r0:r0 + 32].T), out=sigma2[r0:r0 + 32])
    sigma2 /= F32(x.shape[1])
    w += sigma2[:, None]
    np.sqrt(w, out=w)
    w *= qw
    return w


def _dequant_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=1)


def _dequant_qh(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def _f16(blocks: np.ndarray, col: int) -> np.ndarray:
    return blocks[:, col:col + 2].copy().view(np.float16).astype(F32).ravel()


# ---- Q8_0 --------------------------------------------------------------------------------------------------
def _absmax(xb: np.ndarray) -> np.ndarray:
    """Per-block max |x| of ``xb`` (m, 32), the lane trick of :func:`_minmax` on the bits: for non-negative
    floats the uint32 order is the float order, and clearing the sign bit is |x| (always +0.0 for zeros)."""
    m = xb.shape[0]
    t = np.ascontiguousarray(xb.view(np.complex128).T).view(np.uint32).reshape(8, m, 4)
    t &= np.uint32(0x7FFFFFFF)
    a = t.max(axis=0)
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), np.maximum(a[:, 2], a[:, 3])).view(F32)


def _encode_q8_0(xb: np.ndarray, out: np.ndarray) -> None:
    d = _absmax(xb) / F32(127)
    t = xb * _inv(d)[:, None]
    _roundf_inplace(t, np.empty(t.shape, np.uint32))
    np.copyto(out[:, 2:].view(np.int8), t, casting="unsafe")  # float -> int8 truncates, like C
    _put_f16(out, 0, d)


class Q8_0(Kernel, qtype=QT.Q8_0, block_size=32, type_size=34):
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return _each_chunk(x, cls.type_size, _encode_q8_0)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks[:, 2:].view(np.int8).astype(F32) * _f16(blocks, 0)[:, None]


# ---- Q4_0 / Q5_0 (symmetric) --------------------------------------------------------------------------------
def _sym_ref(xb: np.ndarray, nhalf: int) -> tuple[np.ndarray, np.ndarray]:
    """d = max/-nhalf; q = MIN(2*nhalf-1, (int8_t)(x*id + nhalf+0.5))."""
    _, mx = _signed_absmax(xb)
    d = mx / F32(-nhalf)
    t = xb * _inv(d)[:, None]
    t += F32(nhalf + 0.5)
    q = t.astype(np.uint8)  # t >= 0.5 - tiny: truncation toward zero as in C
    _clip(q, _U8_0, np.array(2 * nhalf - 1, np.uint8), q)
    return d, q


def _encode_q4_0(xb, out):
    d, q = _sym_ref(xb, 8)
    _put_f16(out, 0, d)
    _put_nibbles(out, 2, q)


def _encode_q5_0(xb, out):
    d, q = _sym_ref(xb, 16)
    _put_f16(out, 0, d)
    _put_qh(out, 2, q)
    _put_nibbles(out, 6, q)


def _impl_q4_0(x, imatrix, out):
    d, L = make_qx_quants(x.reshape(-1, 32), 8, 1, _row_weights(x, imatrix).reshape(-1, 32))
    _put_f16(out, 0, d)
    _put_nibbles(out, 2, L.view(np.uint8))


def _impl_q5_0(x, imatrix, out):
    d, L = make_qx_quants(x.reshape(-1, 32), 16, 1, _row_weights(x, imatrix).reshape(-1, 32))
    q = L.view(np.uint8)
    _put_f16(out, 0, d)
    _put_qh(out, 2, q)
    _put_nibbles(out, 6, q)


class Q4_0(Kernel, qtype=QT.Q4_0, block_size=32, type_size=18):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        if imatrix is None:
            return _each_chunk(x, cls.type_size, _encode_q4_0)
        return _by_rows(x, imatrix, cls.type_size, _impl_q4_0)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        q = _dequant_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return q.astype(F32) * _f16(blocks, 0)[:, None]


class Q5_0(Kernel, qtype=QT.Q5_0, block_size=32, type_size=22):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        if imatrix is None:
            return _each_chunk(x, cls.type_size, _encode_q5_0)
        return _by_rows(x, imatrix, cls.type_size, _impl_q5_0)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        q = (_dequant_nibbles(blocks[:, 6:]) | _dequant_qh(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
        return q.astype(F32) * _f16(blocks, 0)[:, None]


# ---- Q4_1 / Q5_1 (scale + min) -----------------------------------------------------------------------------
def _asym_ref(xb: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d = (max-min)/nmax; q = (int)((x-min)*id + 0.5) (Q4_1 also clamps to 15: a no-op in range)."""
    lo, hi = _minmax(xb)
    mn = _first_min(xb, lo)
    d = hi - mn
    d += F32(0)  # ggml's max-min is never -0 (equal extremes are the same element)
    d /= F32(nmax)
    t = xb - mn[:, None]
    t *= _inv(d)[:, None]
    t += F32(0.5)
    q = t.astype(np.uint8)
    _clip(q, _U8_0, np.array(nmax, np.uint8), q)
    return d, mn, q


def _encode_q4_1(xb, out):
    d, mn, q = _asym_ref(xb, 15)
    _put_f16(out, 0, d)
    _put_f16(out, 2, mn)
    _put_nibbles(out, 4, q)


def _encode_q5_1(xb, out):
    d, mn, q = _asym_ref(xb, 31)
    _put_f16(out, 0, d)
    _put_f16(out, 2, mn)
    _put_qh(out, 4, q)
    _put_nibbles(out, 8, q)


def _asym_impl(x: np.ndarray, imatrix: np.ndarray, nmax: int, out: np.ndarray) -> np.ndarray:
    d, the_min, q = make_qkx3_quants(x.reshape(-1, 32), nmax, _row_weights(x, imatrix).reshape(-1, 32))
    _put_f16(out, 0, d)
    _put_f16(out, 2, -the_min)
    return q


def _impl_q4_1(x, imatrix, out):
    _put_nibbles(out, 4, _asym_impl(x, imatrix, 15, out))


def _impl_q5_1(x, imatrix, out):
    q = _asym_impl(x, imatrix, 31, out)
    _put_qh(out, 4, q)
    _put_nibbles(out, 8, q)


class Q4_1(Kernel, qtype=QT.Q4_1, block_size=32, type_size=20):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        if imatrix is None:
            return _each_chunk(x, cls.type_size, _encode_q4_1)
        return _by_rows(x, imatrix, cls.type_size, _impl_q4_1)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        q = _dequant_nibbles(blocks[:, 4:]).astype(F32)
        return q * _f16(blocks, 0)[:, None] + _f16(blocks, 2)[:, None]


class Q5_1(Kernel, qtype=QT.Q5_1, block_size=32, type_size=24):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        if imatrix is None:
            return _each_chunk(x, cls.type_size, _encode_q5_1)
        return _by_rows(x, imatrix, cls.type_size, _impl_q5_1)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        q = (_dequant_nibbles(blocks[:, 8:]) | _dequant_qh(blocks[:, 4:8])).astype(F32)
        return q * _f16(blocks, 0)[:, None] + _f16(blocks, 2)[:, None]
