"""Q4_K and Q5_K: 256-value super-blocks of eight 32-value sub-blocks, each with a 6-bit scale and min.

Block layouts (ggml-common.h)::

    block_q4_K (144 B): fp16 d | fp16 dmin | scales[12] | qs[128]            (4-bit levels, two per byte)
    block_q5_K (176 B): fp16 d | fp16 dmin | scales[12] | qh[32] | qs[128]   (+ 5th bit of each level in qh)

``scales[12]`` packs eight 6-bit scales ``ls`` and mins ``lm`` (``get_scale_min_k4``)::

    j < 4:  scales[j] = ls[j] | (ls[j+4] >> 4) << 6      scales[j+4] = lm[j] | (lm[j+4] >> 4) << 6
            scales[j+8] = (ls[j+4] & 0xF) | (lm[j+4] & 0xF) << 4

A value decodes as ``d*sc*q - dmin*m``.  Levels: value ``32*j + l`` of a 64-value group goes to the low nibble
of ``qs[l]`` (j even) or the high nibble (j odd); Q5_K's 5th bit of sub-block ``j`` is bit ``j`` of ``qh[l]``.

Encoders: without imatrix ggml uses ``quantize_row_q{4,5}_K_ref`` (make_qkx2_quants search, then the
largest scale/min mapped to 63); with one, ``quantize_row_q{4,5}_K_impl`` (make_qkx3_quants, then
make_qp_quants for the 6-bit scales).  All arithmetic below is float32 in ggml's order.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ._packing import get_f16, put_bits, put_f16, put_nibbles, unpack_bits, unpack_nibbles
from ._prims import F32, max_gt_zero, nearest_int, seq_sum
from .base import Kernel
from .qkx_search import qkx_search_t
from .refine_search import make_qp_quants_t

QK_K = 256


def _ref_weights(xt: np.ndarray, k0: int, ctx) -> np.ndarray:
    """quantize_row_q*_K_ref's weights: av_x + |x| with av_x = sqrt(sum x^2 / 32) of the sub-block."""
    av_x = np.sqrt(seq_sum(xt * xt) / F32(32))
    wt = np.abs(xt)
    wt += av_x
    return wt


def _impl_weights(xt: np.ndarray, k0: int, ctx) -> np.ndarray:
    """quantize_row_q*_K_impl's weights: qw * sqrt(sigma2 + x^2), sigma2 = 2 * sum x^2 / 256 of the super-block."""
    x, qw = ctx                                           # x (n_sub, 32) of the whole chunk, qw (n_sub, 32)
    k1 = k0 + xt.shape[1]
    xs = np.ascontiguousarray(x[k0:k1].reshape(-1, QK_K).T)    # (256, n_super): the super-block's order
    sigma2 = F32(2) * seq_sum(xs * xs) / F32(QK_K)
    wt = xt * xt
    wt += np.repeat(sigma2, 8)
    np.sqrt(wt, out=wt)
    wt *= qw[k0:k1].T
    return wt


# Sub-blocks per search piece (see qkx_search.SEARCH_VALUES); the weights are made piece by piece too.
SEARCH_SUB_BLOCKS = 8192


def _search(xs: np.ndarray, weights, ctx, nmax: int, rmin: float, rdelta: float, nstep: int, qkx3: bool):
    """Run the sub-block search over ``xs`` (n_sub, 32) in cache-sized pieces.

    Returns scales, mins, sum of weights per sub-block (n_sub,) and the search's levels (n_sub, 32) uint8.
    """
    nsub = xs.shape[0]
    scales, mins, sw = (np.empty(nsub, F32) for _ in range(3))
    lev = np.empty((nsub, 32), np.uint8)
    for k0 in range(0, nsub, SEARCH_SUB_BLOCKS):
        xt = np.ascontiguousarray(xs[k0:k0 + SEARCH_SUB_BLOCKS].T)
        wt = weights(xt, k0, ctx)
        k1 = k0 + xt.shape[1]
        if qkx3:
            sw[k0:k1] = seq_sum(wt)
        scales[k0:k1], mins[k0:k1], lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, False)
        lev[k0:k1] = lt.T
    return scales, mins, sw, lev


def _ref_scales(scales: np.ndarray, mins: np.ndarray):
    """6-bit scales/mins of the ref encoder: the largest maps to 63.  Returns ls, lm uint8 (n_super, 8), d, dmin."""
    max_scale = max_gt_zero(scales, axis=1)          # 'if (scales[j] > max_scale)' from 0
    max_min = max_gt_zero(mins, axis=1)
    with np.errstate(divide="ignore", over="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = (max_scale / F32(63)).astype(np.float16)
    dmin = (max_min / F32(63)).astype(np.float16)
    return ls, lm, d, dmin


def _pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 8-bit ls/lm per super-block -> scales[12] exactly as ggml writes them (uint8 wrap-around included)."""
    sc = np.empty((ls.shape[0], 12), np.uint8)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return sc


def _unpack_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: scales[12] (n, 12) -> sc, m uint8 (n, 8)."""
    d = np.empty((sc.shape[0], 8), np.uint8)
    m = np.empty_like(d)
    d[:, :4] = sc[:, 0:4] & 63
    m[:, :4] = sc[:, 4:8] & 63
    d[:, 4:] = (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)
    m[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return d, m


def _final_levels(xs, lev, sc, m, d16, dmin16, nmax):
    """Re-quantize each sub-block with the stored (fp16, 6-bit) scale and min; a zero scale keeps the search's L.

    ``xs`` (n_sub, 32) float32, ``lev`` the search's levels (n_sub, 32); returns uint8 (n_sub, 32).
    """
    d = (d16.astype(F32)[:, None] * sc.astype(F32)).reshape(-1, 1)
    dm = (dmin16.astype(F32)[:, None] * m.astype(F32)).reshape(-1, 1)
    q = nearest_int((xs + dm) / d)
    np.clip(q, np.int32(0), np.int32(nmax), out=q)
    q = q.astype(np.uint8)
    keep = np.flatnonzero(d[:, 0] == 0)
    q[keep] = lev[keep]
    return q


def _encode(x: np.ndarray, imatrix: np.ndarray | None, nmax: int, rmin: float, nstep: int, cap63: bool):
    """Shared Q4_K/Q5_K encoder: returns d, dmin (fp16), scales[12], final levels L (n_super, 256) uint8."""
    xs = x.reshape(-1, 32)
    if imatrix is None:
        scales, mins, _, lev = _search(xs, _ref_weights, None, nmax, rmin, 0.1, nstep, False)
        ls, lm, d, dmin = _ref_scales(scales.reshape(-1, 8), mins.reshape(-1, 8))
    else:
        qw = np.tile(imatrix.reshape(-1, 32), (x.shape[0], 1))
        scales, mins, sw, lev = _search(xs, _impl_weights, (xs, qw), nmax, -0.9, 0.05, 36, True)
        sw8 = np.ascontiguousarray(sw.reshape(-1, 8).T)
        d_block, ls = make_qp_quants_t(np.ascontiguousarray(scales.reshape(-1, 8).T), 63, sw8)
        m_block, lm = make_qp_quants_t(np.ascontiguousarray(mins.reshape(-1, 8).T), 63, sw8)
        ls, lm = ls.T, lm.T
        d, dmin = d_block.astype(np.float16), m_block.astype(np.float16)
        if cap63:  # quantize_row_q5_K_impl clamps to 63, q4_K's does not
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    packed = _pack_scales(ls, lm)
    sc, m = _unpack_scales(packed)
    q = _final_levels(xs, lev, sc, m, d, dmin, nmax)
    return d, dmin, packed, q.reshape(-1, QK_K)


class _Q45K:
    """Q4_K and Q5_K: ``d | dmin | scales[12] | qh[32] (Q5_K) | qs[128]``; ``ref`` = (nmax, rmin, nstep) of
    the reference encoder's make_qkx2_quants call."""
    uses_imatrix = True
    bits: int
    ref: tuple[int, float, int]
    # Values per encoder call: large enough that make_qp_quants' short loops over the eight sub-blocks of a
    # super-block run on long vectors, small enough that the call's full-size temporaries stay modest.
    chunk_values = 1 << 21

    @classmethod
    def _encode_rows(cls, x, imatrix):
        nmax, rmin, nstep = cls.ref
        d, dmin, packed, q = _encode(x, imatrix, nmax, rmin, nstep, cap63=cls.bits == 5)
        out = np.empty((q.shape[0], cls.type_size), np.uint8)
        put_f16(out, 0, d)
        put_f16(out, 2, dmin)
        out[:, 4:16] = packed
        col = 16
        if cls.bits == 5:       # bit 4 of the level of sub-block j, value l -> bit j of qh[l]
            put_bits(out, 16, q.reshape(-1, 8, 32).transpose(0, 2, 1), 4)
            col = 48
        put_nibbles(out, col, q, 32)
        return out

    @classmethod
    def _dequantize_blocks(cls, blocks):
        """dequantize_row_q{4,5}_K: y = (d*sc) * q - (dmin*m) per sub-block."""
        col = 16 if cls.bits == 4 else 48
        q = unpack_nibbles(blocks[:, col:], 32).reshape(-1, 8, 32)
        if cls.bits == 5:
            q |= unpack_bits(blocks[:, 16:48]).transpose(0, 2, 1) << np.uint8(4)
        sc, m = _unpack_scales(blocks[:, 4:16])
        d1 = (get_f16(blocks, 0) * sc.astype(F32))[:, :, None]
        m1 = (get_f16(blocks, 2) * m.astype(F32))[:, :, None]
        return (d1 * q.astype(F32) - m1).reshape(-1, QK_K)


class Q4_K(_Q45K, Kernel, qtype=QT.Q4_K, block_size=QK_K, type_size=144):
    bits, ref = 4, (15, -1.0, 20)


class Q5_K(_Q45K, Kernel, qtype=QT.Q5_K, block_size=QK_K, type_size=176):
    bits, ref = 5, (31, -0.5, 15)
