"""Q3_K: super-blocks of 256 values in 16 groups of 16; x = d * sc_j * (q - 4), q 3-bit, sc_j 6-bit signed.

Block layout (110 bytes), as ggml's ``block_q3_K``::

    hmask[32]   high bit of each quant: element e -> byte e % 32, bit e // 32
    qs[64]      low 2 bits: element 128*h + 32*k + l -> byte 32*h + l, bits 2k..2k+1
    scales[12]  16 six-bit scales (stored +32): bytes 0..7 hold the low nibbles (groups 0-7 low, 8-15 high),
                bytes 8..11 the top 2 bits (group j -> byte 8 + j % 4, bits 2*(j // 4))
    d           fp16 super-block scale

Without an imatrix ggml uses ``quantize_row_q3_K_ref`` (``make_q3_quants`` with its refinement passes); with one,
``quantize_row_q3_K_impl`` (``make_qx_quants`` weighted by ``imatrix * sqrt(sigma2 + x^2)``).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ._packing import get_f16, put_2bit, put_bits, put_f16, unpack_2bit, unpack_bits
from ._prims import F32, clip_nearest, nearest_int, seq_sum, signed_absmax
from .base import Kernel
from .qx_search import make_qx_quants
from .refine_search import make_q3_quants_t

QK_K = 256
_F0 = F32(0.0)


def _pack_scales(ls: np.ndarray) -> np.ndarray:
    """16 values 0..63 per block (int, ``(nb, 16)``) -> ggml's 12 scale bytes."""
    nb = ls.shape[0]
    out = np.zeros((nb, 12), np.uint8)
    out[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4) & 3                              # group j -> byte 8 + j % 4, bits 2*(j // 4)
    out[:, 8:] = (hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)).astype(np.uint8)
    return out


def _unpack_scales(sb: np.ndarray) -> np.ndarray:
    """12 scale bytes -> 16 signed scales ``sc - 32`` (int8, ``(nb, 16)``)."""
    sb = sb.astype(np.int32)
    lo = np.concatenate([sb[:, :8] & 0xF, sb[:, :8] >> 4], axis=1)
    hi = np.concatenate([(sb[:, 8:12] >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    return ((lo | (hi << 4)) - 32).astype(np.int8)


def _requant(x: np.ndarray, L: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``if (!d) continue; L = MAX(-4, MIN(3, nearest_int(x/d))) + 4`` with the fp16-rounded group scale.

    Any layout: ``x`` and ``L`` share a shape, ``d`` broadcasts against it (one value per group)."""
    lq = clip_nearest(x / d, -4, 3, offset=4)
    np.copyto(lq, L, where=d == _F0)
    return lq.astype(np.uint8)


def _pack(L: np.ndarray, scale_bytes: np.ndarray, d16: np.ndarray) -> np.ndarray:
    """Levels 0..7 ``(nb, 256)`` -> ggml blocks: high bit to hmask (bit k of byte l: element 32k + l), low 2
    bits to qs."""
    nb = L.shape[0]
    out = np.empty((nb, 110), np.uint8)
    put_bits(out, 0, L.reshape(nb, 8, 32).transpose(0, 2, 1), 2)
    put_2bit(out, 32, L & np.uint8(3))
    out[:, 96:108] = scale_bytes
    put_f16(out, 108, d16)
    return out


def _group_d(d16: np.ndarray, scale_bytes: np.ndarray) -> np.ndarray:
    """ggml's ``d = GGML_FP16_TO_FP32(y[i].d) * sc`` for every group: ``(nb, 16)`` float32."""
    return d16.astype(F32)[:, None] * _unpack_scales(scale_bytes).astype(F32)


def _quantize_ref(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.reshape(-1, 16).T)           # (16, groups): element i of every group in a row
    scales, lt = make_q3_quants_t(xt, 4, True)
    scales = scales.reshape(nb, 16)
    # the first scale of largest magnitude; NaN (from x^3 overflowing, |x| > ~7e12) never wins, as in ggml
    _, max_scale = signed_absmax(scales, axis=1)
    nz = max_scale != _F0
    iscale = np.float32(-32.0) / max_scale
    l = nearest_int(iscale[:, None] * scales)
    l = ((l + 128) & 0xFF) - 128                # int8_t l = nearest_int(...)
    ls = np.clip(l, -32, 31) + 32
    scale_bytes = np.where(nz[:, None], _pack_scales(ls), np.uint8(0))
    d16 = np.where(nz, np.float32(1.0) / iscale, _F0).astype(np.float16)
    lt = _requant(xt, lt, _group_d(d16, scale_bytes).reshape(-1))
    return _pack(np.ascontiguousarray(lt.T).reshape(nb, QK_K), scale_bytes, d16)


def _quantize_impl(xb: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.T)
    sumx2 = seq_sum(xt * xt)
    sigma2 = (np.float32(2.0) * sumx2) / np.float32(QK_K)
    weight = qw * np.sqrt(sigma2[:, None] + xb * xb)                          # (nb, 256)
    sw = seq_sum(np.ascontiguousarray(weight.reshape(nb, 16, 16).transpose(2, 0, 1)))   # (nb, 16)
    scales, L = make_qx_quants(xb.reshape(-1, 16), 4, 1, weight.reshape(-1, 16))
    d_block, ls = make_qx_quants(np.asarray(scales, np.float32).reshape(nb, 16), 32, 1, sw)
    scale_bytes = _pack_scales(ls.astype(np.int32))
    d16 = np.asarray(d_block, np.float32).astype(np.float16)
    L = _requant(xb.reshape(-1, 16), L.view(np.uint8), _group_d(d16, scale_bytes).reshape(-1, 1))
    return _pack(L.reshape(nb, QK_K), scale_bytes, d16)


def _quantize_chunk(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows, n = x.shape
    xb = x.reshape(-1, QK_K)
    if imatrix is None:
        return _quantize_ref(xb)
    qw = np.broadcast_to(imatrix.reshape(1, n // QK_K, QK_K), (rows, n // QK_K, QK_K)).reshape(-1, QK_K)
    return _quantize_impl(xb, qw)


class Q3_K(Kernel, qtype=QT.Q3_K, block_size=QK_K, type_size=110):
    uses_imatrix = True
    chunk_values = 1 << 19  # as Q2_K
    _encode_rows = staticmethod(_quantize_chunk)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        nb = blocks.shape[0]
        dl = get_f16(blocks, 108) * _unpack_scales(blocks[:, 96:108]).astype(F32)   # (nb, 16)
        q = unpack_2bit(blocks[:, 32:96]).astype(np.int8)                        # (nb, 256)
        hm = unpack_bits(blocks[:, :32]).transpose(0, 2, 1).reshape(nb, QK_K)   # element 32k + l: bit k of l
        q -= ((hm ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
        return (dl[:, :, None] * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)
