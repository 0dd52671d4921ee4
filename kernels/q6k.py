"""Q6_K: 256-value super-blocks of 16 groups of 16, 6-bit levels (ggml-quants.c, bit for bit).

Block layout (210 bytes)::

    ql[128]      low 4 bits: for each half h of 128 values, ql[64h + l]      = L[l] | L[l+64] << 4,
                                                            ql[64h + 32 + l] = L[l+32] | L[l+96] << 4
    qh[64]       high 2 bits: qh[32h + l] = L[l]>>4 | L[l+32]>>4 << 2 | L[l+64]>>4 << 4 | L[l+96]>>4 << 6
    scales[16]   int8 group scales
    d            fp16 super-block scale;  x = d * scales[g] * (L - 32)

Encoder (``quantize_row_q6_K_ref`` / ``_impl``, which only differ by the weights of the group search): each
group's scale from ``make_qx_quants(16, 32, x, L, 1, qw)``; the scales are quantized to int8 against the one
of largest magnitude; then every group whose rounded scale is non-zero is re-quantized with it.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .base import Kernel
from .qx_search import GROUP_MAX_EPS, make_qx_scales, nearest_int, qx_levels, signed_absmax

F32 = np.float32
QK_K = 256
_CHUNK_BLOCKS = 1024  # super-blocks per chunk: 1 MB of float32 input


def _super_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From group scales (nb, 16): fp16 d, int8 scales and the all-zero super-blocks."""
    # (a NaN scale, from sums that overflowed at |x| > ~1e12, never wins: signed_absmax skips NaN like ggml)
    amax, max_scale = signed_absmax(np.ascontiguousarray(scales.T))
    zero = amax < GROUP_MAX_EPS
    max_scale[zero] = 1  # placeholder; zero super-blocks are written as all-zero bytes
    iscale = F32(-128) / max_scale
    d16 = (F32(1) / iscale).astype(np.float16)
    sc = np.minimum(nearest_int(scales * iscale[:, None]), 127).astype(np.int8)
    d16[zero] = 0
    sc[zero] = 0
    return d16, sc, zero


def _levels(xg: np.ndarray, dg: np.ndarray) -> np.ndarray:
    """``MAX(-32, MIN(31, nearest_int(x/d))) + 32`` as uint8 for groups (G, 16) with d (G,) (d != 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = xg.reshape(-1) / np.repeat(dg, 16)  # flat: a (G,16)/(G,1) broadcast is 3x slower
    iv = nearest_int(t)  # ggml's bit trick: also right for the inf/NaN quotients of an overflowed fp16 d
    np.clip(iv, np.array(-32, np.int32), np.array(31, np.int32), iv)
    iv += 32
    return iv.astype(np.uint8).reshape(-1, 16)


def _encode(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Super-blocks (nb, 256) -> Q6_K blocks (nb, 210)."""
    xg = xb.reshape(-1, 16)
    scales, iscale, zero_g = make_qx_scales(xg, 32, 1, None if qw is None else qw.reshape(-1, 16))
    d16, sc, zero_b = _super_scales(scales.reshape(-1, 16))
    dg = (d16.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # d * scales[j] per group
    L = _levels(xg, dg)
    dead = dg == 0  # ggml skips these groups and keeps make_qx_quants' levels
    if dead.any():
        L[dead] = qx_levels(xg[dead], iscale[dead], 32, zero_g[dead]).view(np.uint8)
    L = L.reshape(-1, QK_K)
    L[zero_b] = 0
    return _pack(d16, sc, L)


def _pack(d16: np.ndarray, sc: np.ndarray, L: np.ndarray) -> np.ndarray:
    nb = L.shape[0]
    out = np.empty((nb, 210), np.uint8)
    q = L.reshape(nb, 2, 4, 32)  # [half][quarter][l]
    lo = q & np.uint8(15)
    hi = q >> np.uint8(4)
    ql = out[:, :128].reshape(nb, 2, 2, 32)
    np.bitwise_or(lo[:, :, :2], lo[:, :, 2:] << np.uint8(4), out=ql)
    qh = out[:, 128:192].reshape(nb, 2, 32)
    np.bitwise_or(hi[:, :, 0], hi[:, :, 1] << np.uint8(2), out=qh)
    qh |= hi[:, :, 2] << np.uint8(4)
    qh |= hi[:, :, 3] << np.uint8(6)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(nb, 2)
    return out


class Q6_K(Kernel, qtype=QT.Q6_K, block_size=QK_K, type_size=210):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        xb = x.reshape(-1, QK_K)  # super-blocks, row after row
        nb = xb.shape[0]
        qw = None if imatrix is None else imatrix.reshape(-1, QK_K)  # weights of a row's super-blocks
        out = np.empty((nb, cls.type_size), np.uint8)
        for b0 in range(0, nb, _CHUNK_BLOCKS):  # all temporaries of a chunk stay in cache
            b1 = min(nb, b0 + _CHUNK_BLOCKS)
            qwc = None if qw is None else qw[np.arange(b0, b1) % qw.shape[0]]
            out[b0:b1] = _encode(xb[b0:b1], qwc)
        return out.reshape(rows, -1)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        nb = blocks.shape[0]
        ql = blocks[:, :128].reshape(nb, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(nb, 2, 1, 32)
        lo = np.concatenate([ql & np.uint8(15), ql >> np.uint8(4)], axis=2)  # (nb, 2, 4, 32)
        hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
        q = ((lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)).astype(F32).reshape(nb, 16, 16)
        sc = blocks[:, 192:208].view(np.int8).astype(F32)
        d = blocks[:, 208:210].copy().view(np.float16).astype(F32)  # (nb, 1)
        return ((d * sc)[:, :, None] * q).reshape(nb, QK_K)
