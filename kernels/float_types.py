"""Plain float types: F32 (copy), F16 (IEEE half, round-to-nearest-even), BF16 (ggml's rounding)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .base import Kernel


class F32(Kernel, qtype=QT.F32, block_size=1, type_size=4):
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return x.view(np.uint8).copy()

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks.view(np.float32).copy()


class F16(Kernel, qtype=QT.F16, block_size=1, type_size=2):
    # ggml_compute_fp32_to_fp16 rounds to nearest even and overflows to +-inf, exactly like numpy's cast.
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        return x.astype(np.float16).view(np.uint8)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return blocks.view(np.float16).astype(np.float32)


class BF16(Kernel, qtype=QT.BF16, block_size=1, type_size=2):
    # ggml_compute_fp32_to_bf16: bits = (u + 0x7fff + ((u >> 16) & 1)) >> 16, round-to-nearest-even on the
    # top 16 bits (NaN cannot occur: the base class rejects non-finite input).
    @classmethod
    def _quantize_rows(cls, x, imatrix):
        u = x.view(np.uint32)
        h = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
        return h.view(np.uint8)

    @classmethod
    def _dequantize_blocks(cls, blocks):
        return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
