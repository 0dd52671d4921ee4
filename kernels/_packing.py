"""Byte layout helpers shared by the block types: fp16 fields, 4-bit and 2-bit level packing, bit planes.

Writers take the output blocks ``out`` (uint8 ``(m, type_size)``, rows contiguous) and the byte column ``col``
where the field starts; readers take the blocks (or a column slice of them) and return one row per block.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_GATHER_BITS = np.uint64(0x0102040810204080)
_LOW_BITS = np.uint64(0x0101010101010101)
_U4 = np.uint64(4)
_U56 = np.uint64(56)


# ---- fp16 ---------------------------------------------------------------------------------------------------
def put_f16(out: np.ndarray, col: int, v: np.ndarray) -> None:
    """fp16 of ``v`` (m,) at byte ``col`` (even: every type size is), rounded to nearest even like
    ``GGML_FP32_TO_FP16`` (overflow to +-inf included); ``v`` may already be float16."""
    out.view(np.uint16)[:, col // 2] = np.asarray(v).reshape(-1).astype(np.float16, copy=False).view(np.uint16)


def get_f16(blocks: np.ndarray, col: int) -> np.ndarray:
    """The fp16 field at byte ``col`` of every block as float32 ``(m, 1)`` (broadcasts over the block)."""
    return np.ascontiguousarray(blocks[:, col:col + 2]).view(np.float16).astype(F32)


# ---- 4-bit levels -------------------------------------------------------------------------------------------
def put_nibbles(out: np.ndarray, col: int, q: np.ndarray, span: int) -> None:
    """Levels ``q`` uint8 ``(m, k*2*span)`` -> ``k*span`` bytes at ``col``: in every run of ``2*span`` levels,
    byte ``l`` holds level ``l`` in its low nibble and level ``l + span`` in its high one (levels are masked
    to 4 bits).  Legacy blocks use span 16, Q4_K/Q5_K 32, Q6_K's low bits 64.

    Eight bytes at a time: the rows are viewed as uint64 words and transposed, so that every word index is
    one long flat row; a masked low nibble shifted up by 4 cannot carry into the next byte."""
    m, n = q.shape
    w = span // 8
    t = np.ascontiguousarray(q).view(np.uint64).T.copy()   # (n/8, m); a copy even when m == 1
    t &= _LOW_NIBBLES
    t = t.reshape(-1, 2, w, m)
    hi = t[:, 1]
    hi <<= _U4
    lo = t[:, 0]
    lo |= hi
    out[:, col:col + n // 2].view(np.uint64)[...] = lo.reshape(-1, m).T


def unpack_nibbles(qs: np.ndarray, span: int) -> np.ndarray:
    """Inverse of :func:`put_nibbles`: bytes ``(m, k*span)`` -> levels uint8 ``(m, k*2*span)``."""
    q = qs.reshape(qs.shape[0], -1, 1, span)
    return np.concatenate([q & np.uint8(15), q >> np.uint8(4)], axis=2).reshape(qs.shape[0], -1)


# ---- 2-bit levels -------------------------------------------------------------------------------------------
def put_2bit(out: np.ndarray, col: int, q: np.ndarray) -> None:
    """Values 0..3 ``(m, 256k)`` -> ``64k`` bytes at ``col``: value ``128h + 32j + l`` of each 256 goes to byte
    ``32h + l``, bits ``2j..2j+1`` (Q2_K/Q3_K ``qs``, Q6_K ``qh``)."""
    m = q.shape[0]
    v = q.astype(np.uint8, copy=False).reshape(m, -1, 4, 32)
    dst = out[:, col:col + v.shape[1] * 32].reshape(m, -1, 32)
    np.left_shift(v[:, :, 1], np.uint8(2), out=dst)
    dst |= v[:, :, 0]
    dst |= v[:, :, 2] << np.uint8(4)
    dst |= v[:, :, 3] << np.uint8(6)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`put_2bit`: ``(m, 64k)`` bytes -> ``(m, 256k)`` uint8 values 0..3."""
    q = qs.reshape(qs.shape[0], -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & np.uint8(3)).reshape(qs.shape[0], -1)


# ---- bit planes ---------------------------------------------------------------------------------------------
def put_bits(out: np.ndarray, col: int, q: np.ndarray, bit: int = 0) -> None:
    """Bit ``bit`` of the bytes ``q`` (uint8 ``(m, nbytes, 8)``) -> ``nbytes`` bytes at ``col``: bit ``k`` of
    byte ``i`` = bit ``bit`` of ``q[:, i, k]``.  Per uint64 word of 8 bytes, the wanted bits are masked in place
    and one multiplication gathers them into the top byte (bit k lands on bit 56+k; no two partial products
    overlap)."""
    m, nbytes = q.shape[:2]
    w = np.ascontiguousarray(q).view(np.uint64).reshape(m, nbytes) >> np.uint64(bit)
    w &= _LOW_BITS
    w *= _GATHER_BITS
    w >>= _U56
    out[:, col:col + nbytes] = w


def unpack_bits(qb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`put_bits` (``bit=0``): bytes ``(m, nbytes)`` -> bits uint8 ``(m, nbytes, 8)``."""
    return np.unpackbits(qb[:, :, None], axis=2, bitorder="little")
