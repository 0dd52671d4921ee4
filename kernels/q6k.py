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

from ._packing import get_f16, put_2bit, put_f16, put_nibbles, unpack_2bit, unpack_nibbles
from ._prims import F32, GROUP_MAX_EPS, clip, nearest_int, signed_absmax
from .base import Kernel
from .qx_search import make_qx_scales, qx_levels

QK_K = 256
_CHUNK_BLOCKS = 1024  # super-blocks per chunk: 1 MB of float32 input


def _super_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From group scales (nb, 16): fp16 d, int8 scales and the all-zero super-blocks."""
    # (a NaN scale, from sums that overflowed at |x| > ~1e12, never wins: signed_absmax skips NaN like ggml)
    amax, max_scale = signed_absmax(scales, axis=1)
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
    t = xg.reshape(-1) / np.repeat(dg, 16)  # flat: a (G,16)/(G,1) broadcast is 3x slower
    iv = nearest_int(t, inplace=True)  # ggml's bit trick: also right for the inf/NaN quotients of an fp16 d of inf
    clip(iv, np.array(-32, np.int32), np.array(31, np.int32), iv)
    iv += 32
    return iv.astype(np.uint8).reshape(-1, 16)


def _encode(xb: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    """Super-blocks (nb, 256) -> Q6_K blocks into ``out`` (nb, 210)."""
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
    put_nibbles(out, 0, L, 64)                       # ql: low 4 bits, values l and l+64 of each 128
    put_2bit(out, 128, L >> np.uint8(4))             # qh: high 2 bits, like Q2_K's qs
    out[:, 192:208] = sc.view(np.uint8)
    put_f16(out, 208, d16)


class Q6_K(Kernel, qtype=QT.Q6_K, block_size=QK_K, type_size=210):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return cls._by_blocks(x, imatrix, _encode, _CHUNK_BLOCKS)  # all temporaries of a chunk stay in cache

    @classmethod
    def _dequantize_blocks(cls, blocks):
        nb = blocks.shape[0]
        q = unpack_nibbles(blocks[:, :128], 64) | (unpack_2bit(blocks[:, 128:192]) << np.uint8(4))
        q = (q.astype(np.int8) - np.int8(32)).astype(F32).reshape(nb, 16, 16)
        sc = blocks[:, 192:208].view(np.int8).astype(F32)
        return ((get_f16(blocks, 208) * sc)[:, :, None] * q).reshape(nb, QK_K)
