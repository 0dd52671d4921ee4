"""Plain float types: F32 (copy), F16 (IEEE half, round-to-nearest-even), BF16 (ggml's rounding).

F16 and BF16 convert in pieces of :data:`_PIECE` values with integer ops written in place into reused
buffers: a handful of passes that stay in L2 instead of numpy's temporaries streaming through memory (numpy's
own float32 -> float16 cast is a scalar loop, slower than these bit operations).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ._prims import clip
from .base import Kernel

_PIECE = 1 << 16
_U = np.uint32
_ABS, _SIGN16, _U1, _U13, _U16 = _U(0x7FFFFFFF), _U(0x8000), _U(1), _U(13), _U(16)
_F16_ROUND = _U((0x0FFF - 0x38000000) & 0xFFFFFFFF)   # + 0xFFF (round) - (127 - 15) << 23 (rebias), mod 2^32
_F16_MIN_NORMAL = _U(0x38800000)                       # 2^-14 as float32 bits
_F16_INF, _U0 = np.array(0x7C00, np.uint32), np.array(0, np.uint32)   # 0-d: clip's fast path
_HALF_BITS, _HALF = _U(0x3F000000), np.float32(0.5)
_BF16_ROUND = _U(0x7FFF)


def _in_pieces(x: np.ndarray, convert) -> np.ndarray:
    """``convert(u, t, out)`` on pieces of ``x``'s bits: ``u`` uint32 input, ``t`` uint32 scratch, ``out``
    uint16 result, all of one piece's length; returns the uint8 rows of the uint16 result."""
    u = x.view(np.uint32).reshape(-1)
    out = np.empty(u.size, np.uint16)
    scratch = np.empty((3, min(u.size, _PIECE)), np.uint32)
    for i in range(0, u.size, _PIECE):
        ui = u[i:i + _PIECE]
        convert(ui, scratch[:, :ui.size], out[i:i + _PIECE])
    return out.view(np.uint8).reshape(x.shape[0], -1)


def _to_f16(u: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:
    """IEEE fp32 -> fp16 bits, round to nearest even, overflow to +-inf (finite input), like numpy's cast and
    GGML_FP32_TO_FP16.  Normal halves: add 0xFFF plus the lowest kept bit, rebias, shift; subnormal halves
    (|x| < 2^-14): the float sum |x| + 0.5 lets the FPU round the bits into place (computed for all values,
    kept where |x| < 2^-14: cheaper than gathering the few)."""
    a, r, s = scratch
    np.bitwise_and(u, _ABS, out=a)
    np.right_shift(a, _U13, out=r)
    np.bitwise_and(r, _U1, out=r)
    np.add(r, a, out=r)
    np.add(r, _F16_ROUND, out=r)
    np.right_shift(r, _U13, out=r)
    clip(r, _U0, _F16_INF, r)                                   # overflow -> inf
    np.add(a.view(np.float32), _HALF, out=s.view(np.float32))
    np.subtract(s, _HALF_BITS, out=s)
    np.copyto(r, s, where=a < _F16_MIN_NORMAL)
    np.right_shift(u, _U16, out=a)
    np.bitwise_and(a, _SIGN16, out=a)
    np.bitwise_or(r, a, out=out, casting="unsafe")


def _to_bf16(u: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:
    """ggml_compute_fp32_to_bf16: ``(u + 0x7fff + ((u >> 16) & 1)) >> 16``, round to nearest even on the top
    16 bits (NaN cannot occur: the base class rejects non-finite input)."""
    t = scratch[0]
    np.right_shift(u, _U16, out=t)
    np.bitwise_and(t, _U1, out=t)
    np.add(t, _BF16_ROUND, out=t)
    np.add(t, u, out=t)
    np.right_shift(t, _U16, out=out, casting="unsafe")


class F32(Kernel, qtype=QT.F32, block_size=1, type_size=4):
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return x.view(np.uint8).copy()

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks.view(np.float32).copy()


class _Half:
    """F16 and BF16: two bytes a value, converted piece by piece by ``_convert``."""
    _convert = None

    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return _in_pieces(x, cls._convert)


class F16(_Half, Kernel, qtype=QT.F16, block_size=1, type_size=2):
    _convert = staticmethod(_to_f16)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks.view(np.float16).astype(np.float32)


class BF16(_Half, Kernel, qtype=QT.BF16, block_size=1, type_size=2):
    _convert = staticmethod(_to_bf16)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
