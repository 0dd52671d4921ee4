"""Element-level primitives with ggml's float32 semantics, shared by every kernel and search.

Bit-exactness with ``ggml-quants.c`` rests on three kinds of detail that numpy does differently by default:

* **Rounding.**  ggml's ``nearest_int`` adds 1.5*2^23 and reads the low mantissa bits: round half to even for
  |v| < 2^22, deterministic garbage beyond (NaN -> 0, +-inf -> -2^22).  :func:`nearest_int` reproduces it
  everywhere; ``np.rint`` equals it inside that range, which the searches use where they can prove the range.
  C's ``roundf`` (half away from zero) is :func:`roundf_inplace`.
* **Sums.**  ``float s = 0; for (i) s += a[i]`` must add in that order: :func:`seq_sum` (numpy adds pairwise
  along a contiguous axis, which changes the last bit).
* **Extremes.**  ggml scans with a strict comparison (``if (fabsf(v) > amax)``, ``if (v < min)``) or with its
  ``MAX`` macro (``a > b ? a : b``).  They differ from ``np.max`` for NaN (any comparison with NaN is false, so a
  NaN never wins a ``>`` scan but does win, until the next element, a ``MAX`` fold), for which of equal values
  is kept (the first) and for the sign of a zero: :func:`signed_absmax`, :func:`first_min`,
  :func:`max_gt_zero`, :func:`max_macro_zero`.

Constants are numpy scalars, not Python numbers: an array op with a Python scalar takes a slower path in numpy 2.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_F0 = F32(0)
# np.clip's ufunc, called with 0-d bounds and a positional out: the np.clip wrapper costs ~1.5 us a call.
clip = getattr(getattr(np, "_core", None), "umath", np).clip

_MAGIC = F32(12582912.0)        # 1.5 * 2**23
_MANT = np.int32(0x007FFFFF)
_HALF = np.int32(0x00400000)
_SIGN = np.uint32(0x80000000)
_ABS = np.uint32(0x7FFFFFFF)
_ROUNDF_HALF = np.uint32(0x3EFFFFFF)  # bits of 0.49999997f, see roundf_inplace


# ---- rounding -----------------------------------------------------------------------------------------------
def nearest_int(v: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """ggml's ``nearest_int`` (float32 -> int32) for any input, huge and non-finite included.

    ``inplace=True`` reuses ``v`` (float32, a temporary of the caller) as the result's storage."""
    if inplace:
        v += _MAGIC
        t = v
    else:
        t = np.add(np.asarray(v, F32), _MAGIC)
    iv = t.view(np.int32)
    iv &= _MANT
    iv -= _HALF
    return iv


def clip_nearest(v: np.ndarray, lo: int, hi: int, offset: int = 0) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(v))) + offset`` as int32, computed in place in ``v`` (float32 scratch)."""
    np.add(v, _MAGIC, out=v)
    b = v.view(np.int32)
    b &= _MANT
    clip(b, np.int32(lo) + _HALF, np.int32(hi) + _HALF, b)
    b -= _HALF - np.int32(offset)
    return b


def roundf_inplace(t: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero) for |t| < 2^22, exactly: ``trunc(t + copysign(0.49999997f, t))``.

    (0.5 itself would misround 0.49999997f, whose sum with 0.5 rounds up to 1.0; with 0.49999997f every tie
    k+0.5 still sums to a value that rounds to k+1.)  The caller truncates by casting to an integer type;
    ``scratch`` is uint32 of ``t``'s shape."""
    np.bitwise_and(t.view(np.uint32), _SIGN, out=scratch)
    scratch |= _ROUNDF_HALF
    t += scratch.view(F32)
    return t


def inv(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``"""
    return np.divide(F32(1), d, out=np.zeros_like(d), where=d != 0)


# ---- sums ---------------------------------------------------------------------------------------------------
def seq_sum(a: np.ndarray, axis: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """ggml's ``float s = 0; for (i) s += a[i]`` along ``axis``, for every position of the other axes.

    numpy reduces an axis that is not the innermost one row after row, i.e. in exactly this order (``a`` must
    have C-ordered strides, as any slice of a C array has); along the innermost axis it would sum pairwise, so
    when nothing lies inside ``axis`` (a single column) the sum is accumulated explicitly.
    (ggml's sums that start from ``a[0]`` instead of 0 give the same value: they differ only in the sign of an
    all-zero sum, which no caller can observe.)
    """
    axis = axis % a.ndim
    if any(s > 1 for s in a.shape[axis + 1:]):
        return np.add.reduce(a, axis=axis, out=out, initial=_F0)
    r = np.add.accumulate(a, axis=axis).take(-1, axis=axis) + _F0   # + 0: an all -0.0 sum is +0.0, as in C
    if out is None:
        return r
    out[...] = r
    return out


# ---- extremes -----------------------------------------------------------------------------------------------
def _lanes(x: np.ndarray) -> np.ndarray:
    """``x`` (m, n), rows contiguous, n % 4 == 0 -> (n/4, m, 4): reducing a short contiguous axis is slow in
    numpy, so each row is viewed as n/4 lanes of 4 floats (complex128), transposed (cheap: few items per row)
    and reduced along the long axis; the caller folds the 4 lanes.  Always a copy (callers modify it)."""
    m, n = x.shape
    # .copy(), not ascontiguousarray: with m == 1 the transpose is already contiguous and would alias x
    return x.view(np.complex128).T.copy().view(F32).reshape(n // 4, m, 4)


def _fold4(a: np.ndarray, f) -> np.ndarray:
    return f(f(a[:, 0], a[:, 1]), f(a[:, 2], a[:, 3]))


def minmax(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice ``(min, max)`` of 2-D ``x`` along ``axis``; NaN propagates.  (The sign of a zero result is
    not meaningful: see :func:`first_min`.)"""
    if axis == 1 and x.shape[1] % 4 == 0 and x.shape[1] >= 8 and x.strides[1] == 4:
        t = _lanes(x)
        return _fold4(t.min(axis=0), np.minimum), _fold4(t.max(axis=0), np.maximum)
    return x.min(axis=axis), x.max(axis=axis)


def absmax_rows(x: np.ndarray) -> np.ndarray:
    """Per row of ``x`` (m, n) with finite values: ``amax = MAX(amax, fabsf(v))`` from 0 (always +0.0 for zeros).

    The lane trick of :func:`minmax` on the bits: for non-negative floats the uint32 order is the float order,
    and clearing the sign bit is ``fabsf``."""
    t = _lanes(x).view(np.uint32)
    t &= _ABS
    return _fold4(t.max(axis=0), np.maximum).view(F32)


def _first_where(sub: np.ndarray, hit: np.ndarray, axis: int) -> np.ndarray:
    """The value of ``sub`` at the first ``hit`` along ``axis`` (every slice has one)."""
    first = np.expand_dims(np.argmax(hit, axis=axis), axis)
    return np.take_along_axis(sub, first, axis=axis).squeeze(axis)


def signed_absmax(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of 2-D ``x`` along ``axis``: ``(amax, max)`` as ggml computes them with
    ``float amax = 0, max = 0; for (i) if (fabsf(v) > amax) { amax = fabsf(v); max = v; }``:
    ``max`` is the first value of largest magnitude, NaN never wins (group scales can be NaN after an
    overflow), and an all-zero (or all-NaN) slice gives ``+0, +0``."""
    lo, hi = minmax(x, axis)
    if np.isnan(hi).any():
        x = np.where(np.isnan(x), _F0, x)
        lo, hi = minmax(x, axis)
    nlo = -lo
    amax = np.maximum(hi, nlo)
    amax += _F0                                     # -0.0 -> +0.0
    mx = np.where(nlo > hi, lo, hi)
    mx += _F0
    tie = (hi == nlo) & (hi > 0)                    # +a and -a both present: the first one wins
    if tie.any():
        sub = np.compress(tie, x, axis=1 - axis)
        mx[tie] = _first_where(sub, np.abs(sub) == np.expand_dims(amax[tie], axis), axis)
    return amax, mx


def first_min(x: np.ndarray, axis: int = 0, lo: np.ndarray | None = None) -> np.ndarray:
    """Per slice of finite 2-D ``x``: ggml's ``min = x[0] (or FLT_MAX); for (i) if (v < min) min = v``.

    That is ``x.min(axis)`` (pass it as ``lo`` if known; it is updated in place) except for the sign of a zero
    minimum, which is the first zero's."""
    lo = x.min(axis=axis) if lo is None else lo
    z = lo == 0
    if z.any():
        sub = np.compress(z, x, axis=1 - axis)
        lo[z] = _first_where(sub, sub == 0, axis)
    return lo


def max_gt_zero(v: np.ndarray, axis: int = 0) -> np.ndarray:
    """ggml's ``float m = 0; for (i) if (v[i] > m) m = v[i];`` per slice: NaN never wins, +0 if nothing > 0."""
    r = np.fmax.reduce(v, axis=axis)                # fmax skips NaN (an all-NaN slice gives NaN -> 0 below)
    return np.where(r > 0, r, _F0)


def max_macro_zero(xt: np.ndarray) -> np.ndarray:
    """ggml's ``float m = 0; for (i) m = MAX(m, x[i]);`` (``MAX(a,b) = a > b ? a : b``) over axis 0 of ``xt``.

    A NaN element replaces ``m`` (``m > NaN`` is false) until the next element replaces the NaN.  Without NaN
    and with a positive maximum that is just the maximum; the other columns are folded element by element.
    ``xt`` is 2-D."""
    r = xt.max(axis=0)
    odd = np.flatnonzero(~(r > 0))                  # a NaN in the column (NaN > 0 is false), or no positive
    if odd.size:
        sub = xt[:, odd]
        m = np.zeros(odd.size, F32)
        for row in sub:
            m = np.where(m > row, m, row)
        r[odd] = m
    return r
