"""Q2_K: super-blocks of 256 values in 16 groups of 16; x = d * sc_j * q - dmin * m_j, q 2-bit, sc_j/m_j 4-bit.

Block layout (84 bytes), as ggml's ``block_q2_K``::

    scales[16]  group j: low nibble = scale sc_j, high nibble = min m_j
    qs[64]      element 128*h + 32*k + l -> byte 32*h + l, bits 2k..2k+1
    d, dmin     fp16 super-block scales of the scales and of the mins

Without an imatrix ggml uses ``quantize_row_q2_K_ref`` (``make_qkx2_quants`` with |x| weights, mean absolute
error, scales quantized against the largest one); with one, ``quantize_row_q2_K_impl`` (``make_qkx3_quants``
weighted by ``imatrix * sqrt(sigma2 + x^2)``, which with weights given is ``make_qkx2_quants`` line for line,
and ``make_qp_quants`` for the scales and mins).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .base import Kernel
from .kquant_search import make_qkx2_quants, make_qkx3_quants
from .q23_search import make_qp_quants, nearest_int, seq_sum

QK_K = 256
_F0 = np.float32(0.0)
_Q4SCALE = np.float32(15.0)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64) bytes: element 128h + 32k + l in byte 32h + l at bits 2k."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_2bit`: (nb, 64) bytes -> (nb, 256) uint8 values 0..3."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & np.uint8(3)).reshape(-1, QK_K)


def _encode(xb: np.ndarray, L: np.ndarray, sc: np.ndarray, d16: np.ndarray, m16: np.ndarray) -> np.ndarray:
    """Common tail: re-quantize each group with the fp16-rounded scale and min (``if (!d) continue``), pack."""
    nb = xb.shape[0]
    d = d16.astype(np.float32)[:, None] * (sc & 0xF).astype(np.float32)       # (nb, 16)
    dm = m16.astype(np.float32)[:, None] * (sc >> 4).astype(np.float32)
    x3 = xb.reshape(nb, 16, 16)
    lq = np.clip(nearest_int((x3 + dm[:, :, None]) / d[:, :, None]), 0, 3)
    L = np.where((d != _F0)[:, :, None], lq, L.reshape(nb, 16, 16)).reshape(nb, QK_K)
    out = np.empty((nb, 84), np.uint8)
    out[:, :16] = sc
    out[:, 16:80] = pack_2bit(L)
    out[:, 80:82] = d16.reshape(nb, 1).view(np.uint8)
    out[:, 82:84] = m16.reshape(nb, 1).view(np.uint8)
    return out


def _quantize_ref(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xs = xb.reshape(-1, 16)
    scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales = np.asarray(scales, np.float32).reshape(nb, 16)
    mins = np.asarray(mins, np.float32).reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), _F0)    # 'if (scale > max_scale)' from 0: only used when > 0
    max_min = np.maximum(mins.max(axis=1), _F0)
    sc = np.zeros((nb, 16), np.int32)
    ls = nearest_int((_Q4SCALE / max_scale)[:, None] * scales)
    lm = nearest_int((_Q4SCALE / max_min)[:, None] * mins)
    d32 = max_scale / _Q4SCALE
    m32 = max_min / _Q4SCALE
    has_s, has_m = max_scale > _F0, max_min > _F0
    sc = np.where(has_s[:, None], ls & 0xFF, 0)
    sc = np.where(has_m[:, None], (sc | (lm << 4)) & 0xFF, sc)
    d16 = np.where(has_s, d32, _F0).astype(np.float16)
    m16 = np.where(has_m, m32, _F0).astype(np.float16)
    return _encode(xb, np.asarray(L).reshape(nb, QK_K), sc.astype(np.uint8), d16, m16)


def _quantize_impl(xb: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.T)
    sigma2 = seq_sum(xt * xt) / np.float32(QK_K)
    weight = qw * np.sqrt(sigma2[:, None] + xb * xb)                          # (nb, 256)
    sw = seq_sum(np.ascontiguousarray(weight.reshape(nb, 16, 16).transpose(2, 0, 1)))   # (nb, 16)
    scales, mins, L = make_qkx3_quants(xb.reshape(-1, 16), weight.reshape(-1, 16), 3, -0.9, 0.05, 36, False)
    dm, Ls = make_qp_quants(np.asarray(scales, np.float32).reshape(nb, 16), 15, sw)
    mm, Lm = make_qp_quants(np.asarray(mins, np.float32).reshape(nb, 16), 15, sw)
    sc = (Ls.astype(np.int32) | (Lm.astype(np.int32) << 4)) & 0xFF
    return _encode(xb, np.asarray(L).reshape(nb, QK_K), sc.astype(np.uint8), dm.astype(np.float16),
                   mm.astype(np.float16))


class Q2_K(Kernel, qtype=QT.Q2_K, block_size=QK_K, type_size=84):
    uses_imatrix = True

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        xb = x.reshape(-1, QK_K)
        with np.errstate(all="ignore"):            # ggml's inf/nan edge cases are reproduced, not reported
            if imatrix is None:
                out = _quantize_ref(xb)
            else:
                qw = np.broadcast_to(imatrix.reshape(1, n // QK_K, QK_K), (rows, n // QK_K, QK_K)).reshape(-1, QK_K)
                out = _quantize_impl(xb, qw)
        return out.reshape(rows, -1)

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
