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

from ._packing import get_f16, put_2bit, put_f16, unpack_2bit
from ._prims import F32, clip_nearest, max_gt_zero, nearest_int, seq_sum
from .base import Kernel
from .qkx_search import qkx_search_t
from .refine_search import make_qp_quants_t

QK_K = 256
_F0 = F32(0.0)
_Q4SCALE = F32(15.0)


def _encode(xt: np.ndarray, lt: np.ndarray, sc: np.ndarray, d16: np.ndarray, m16: np.ndarray) -> np.ndarray:
    """Common tail on transposed groups ``xt``/``lt`` ``(16, n_groups)``: re-quantize each group with the
    fp16-rounded scale and min (``if (!d) continue``), then pack ``(nb, 84)`` blocks."""
    nb = sc.shape[0]
    d = (d16.astype(F32)[:, None] * (sc & 0xF).astype(F32)).reshape(-1)   # per group
    dm = (m16.astype(F32)[:, None] * (sc >> 4).astype(F32)).reshape(-1)
    v = xt + dm
    v /= d
    lq = clip_nearest(v, 0, 3)
    np.copyto(lq, lt, where=d == _F0)
    out = np.empty((nb, 84), np.uint8)
    out[:, :16] = sc
    put_2bit(out, 16, np.ascontiguousarray(lq.astype(np.uint8).T).reshape(nb, QK_K))
    put_f16(out, 80, d16)
    put_f16(out, 82, m16)
    return out


def _quantize_ref(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.reshape(-1, 16).T)           # (16, groups): element i of every group in a row
    scales, mins, lt = qkx_search_t(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    max_scale = max_gt_zero(scales, axis=1)            # 'if (scale > max_scale)' from 0
    max_min = max_gt_zero(mins, axis=1)
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
    sigma2 = seq_sum(x256 * x256) / F32(QK_K)                                # per super-block
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


class Q2_K(Kernel, qtype=QT.Q2_K, block_size=QK_K, type_size=84):
    uses_imatrix = True
    # chunks of ~512K weights: bounded memory (the searches hold ~10 float32 copies of their input), arrays
    # long enough for numpy (measured on 4M weights: fastest)
    chunk_values = 1 << 19
    _encode_rows = staticmethod(_quantize_chunk)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        sc = blocks[:, :16]
        dl = get_f16(blocks, 80) * (sc & 0xF).astype(F32)                   # (nb, 16)
        ml = get_f16(blocks, 82) * (sc >> 4).astype(F32)
        q = unpack_2bit(blocks[:, 16:80]).astype(F32).reshape(-1, 16, 16)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)
