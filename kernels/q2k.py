"""Q2_K: super-blocks of 256 values in 16 groups of 16; x = d * sc_j * q - dmin * m_j, q 2-bit, sc_j/m_j 4-bit.

Block layout (84 bytes), as ggml's ``block_q2_K``::

    scales[16]  group j: low nibble = scale sc_j, high nibble = min m_j
    qs[64]      element 128*h + 32*k + l -> byte 32*h + l, bits 2k..2k+1
    d, dmin     fp16 super-block scales of the scales and of the mins

Without an imatrix ggml uses ``quantize_row_q2_K_ref`` (``make_qkx2_quants`` with |x| weights, mean absolute
error, scales quantized against the largest one); with one, ``quantize_row_q2_K_impl`` (``make_qkx3_quants``
weighted by ``imatrix * sqrt(sigma2 + x^2)``, which with weights given is ``make_qkx2_quants`` line for line,
and ``make_qp_quants`` for the scales and mins).  Both searches run on groups transposed to ``(16, n_groups)``.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .base import Kernel
from .kquant_search import qkx_search_t
from .q23_search import clip_nearest, make_qp_quants_t, nearest_int, seq_sum

QK_K = 256
_F0 = np.float32(0.0)
_Q4SCALE = np.float32(15.0)
CHUNK_WEIGHTS = 1 << 19


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64) bytes: element 128h + 32k + l in byte 32h + l at bits 2k."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_2bit`: (nb, 64) bytes -> (nb, 256) uint8 values 0..3."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & np.uint8(3)).reshape(-1, QK_K)


def _encode(xt: np.ndarray, lt: np.ndarray, sc: np.ndarray, d16: np.ndarray, m16: np.ndarray) -> np.ndarray:
    """Common tail on transposed groups ``xt``/``lt`` ``(16, n_groups)``: re-quantize each group with the
    fp16-rounded scale and min (``if (!d) continue``), then pack ``(nb, 84)`` blocks."""
    nb = sc.shape[0]
    d = (d16.astype(np.float32)[:, None] * (sc & 0xF).astype(np.float32)).reshape(-1)   # per group
    dm = (m16.astype(np.float32)[:, None] * (sc >> 4).astype(np.float32)).reshape(-1)
    v = xt + dm
    v /= d
    lq = clip_nearest(v, 0, 3)
    np.copyto(lq, lt, where=d == _F0)
    out = np.empty((nb, 84), np.uint8)
    out[:, :16] = sc
    out[:, 16:80] = pack_2bit(np.ascontiguousarray(lq.astype(np.uint8).T).reshape(nb, QK_K))
    out[:, 80:82] = d16.reshape(nb, 1).view(np.uint8)
    out[:, 82:84] = m16.reshape(nb, 1).view(np.uint8)
    return out


def _quantize_ref(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.reshape(-1, 16).T)           # (16, groups): element i of every group in a row
    scales, mins, lt = qkx_search_t(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), _F0)    # 'if (scale > max_scale)' from 0: only used when > 0
    max_min = np.maximum(mins.max(axis=1), _F0)
    ls = nearest_int((_Q4SCALE / max_scale)[:, None] * scales)
    lm = nearest_int((_Q4SCALE / max_min)[:, None] * mins)
    has_s, has_m = max_scale > _F0, max_min > _F0
    sc = np.where(has_s[:, None], ls & 0xFF, 0)
    sc = np.where(has_m[:, None], (sc | (lm << 4)) & 0xFF, sc)
    d16 = np.where(has_s, max_scale / _Q4SCALE, _F0).astype(np.float16)
    m16 = np.where(has_m, max_min / _Q4SCALE, _F0).astype(np.float16)
    return _encode(xt, lt, sc.astype(np.uint8), d16, m16)


def _quantize_impl(xb: np.ndarray, qwt: np.ndarray) -> np.ndarray:
    """``qwt``: the imatrix laid out like ``xt`` (16, groups)."""
    nb = xb.shape[0]
    x256 = np.ascontiguousarray(xb.T)
    sigma2 = seq_sum(x256 * x256) / np.float32(QK_K)                         # per super-block
    xt = np.ascontiguousarray(xb.reshape(-1, 16).T)
    wt = np.sqrt(np.repeat(sigma2, 16) + xt * xt)
    wt *= qwt                                                                 # qw[l] * sqrtf(sigma2 + x*x)
    sw = seq_sum(wt).reshape(nb, 16)                                          # ggml's sw[j] += weight[l]
    scales, mins, lt = qkx_search_t(xt, wt, 3, -0.9, 0.05, 36, False)        # = make_qkx3_quants with weights
    swt = np.ascontiguousarray(sw.T)
    dm, ls = make_qp_quants_t(np.ascontiguousarray(scales.reshape(nb, 16).T), 15, swt)
    mm, lm = make_qp_quants_t(np.ascontiguousarray(mins.reshape(nb, 16).T), 15, swt)
    sc = (ls.T.astype(np.int32) | (lm.T.astype(np.int32) << 4)) & 0xFF
    return _encode(xt, lt, sc.astype(np.uint8), dm.astype(np.float16), mm.astype(np.float16))


def imatrix_t(imatrix: np.ndarray, rows: int) -> np.ndarray:
    """The per-column imatrix laid out like a transposed row block ``(16, rows * n/16)``: group g of row r is
    ``imatrix[16*g : 16*g + 16]`` (ggml indexes ``quant_weights + QK_K*i + 16*j`` within each row)."""
    return np.tile(np.ascontiguousarray(imatrix.reshape(-1, 16).T), (1, rows))


def _quantize_chunk(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    xb = x.reshape(-1, QK_K)
    if imatrix is None:
        return _quantize_ref(xb)
    return _quantize_impl(xb, imatrix_t(imatrix, x.shape[0]))


def in_row_chunks(x: np.ndarray, imatrix: np.ndarray | None, encode, type_size: int) -> np.ndarray:
    """``encode(rows, imatrix) -> (n_blocks, type_size)`` over row chunks of about ``CHUNK_WEIGHTS`` values.

    Bounds the working memory (the searches hold ~10 float32 copies of their input) and keeps the arrays large
    enough that numpy's per-call overhead stays small (measured on 4M weights: 512K per chunk is fastest).
    """
    rows, n = x.shape
    step = max(1, CHUNK_WEIGHTS // n)
    out = np.empty((rows, n // QK_K * type_size), np.uint8)
    with np.errstate(all="ignore"):               # ggml's inf/nan edge cases are reproduced, not reported
        for r0 in range(0, rows, step):
            out[r0:r0 + step] = encode(x[r0:r0 + step], imatrix).reshape(-1, out.shape[1])
    return out


class Q2_K(Kernel, qtype=QT.Q2_K, block_size=QK_K, type_size=84):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return in_row_chunks(x, imatrix, _quantize_chunk, cls.type_size)

    @classmethod
    @np.errstate(all="ignore")                      # an fp16 d of inf decodes to inf/nan, as in ggml
    def _dequantize_blocks(cls, blocks):
        sc = blocks[:, :16]
        d = blocks[:, 80:82].copy().view(np.float16).astype(np.float32)          # (nb, 1)
        dmin = blocks[:, 82:84].copy().view(np.float16).astype(np.float32)
        dl = d * (sc & 0xF).astype(np.float32)                                   # (nb, 16)
        ml = dmin * (sc >> 4).astype(np.float32)
        q = unpack_2bit(blocks[:, 16:80]).astype(np.float32).reshape(-1, 16, 16)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)
