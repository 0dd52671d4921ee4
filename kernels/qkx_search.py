"""ggml's scale/min searches ``make_qkx2_quants`` / ``make_qkx3_quants``, vectorised across blocks, bit for bit.

Used by every type with a min: Q2_K, Q4_K, Q5_K (sub-block scales) and the weighted Q4_1/Q5_1 encoders.

Layout: the core works on *transposed* data ``(n, n_blocks)`` (element index first) so that
``np.add.reduce(..., axis=0)`` adds the n elements one after another, the order ggml's scalar loops use
(numpy only sums pairwise along the contiguous last axis).  The public wrappers take ``(n_blocks, n)``.

Rounding: ggml's ``nearest_int`` is round-half-even for ``|v| < 2^22`` and garbage (reproduced by
:func:`~kernels._prims.nearest_int`) beyond.  Inside the search the argument ``iscale*(x - min)`` stays within
a few units of ``[0, nmax]`` for finite ranges, so ``np.rint`` is used there; blocks that could leave that
range (subnormal or overflowing ranges) switch to the bit trick.

A quirk the port keeps: the searches overwrite ``min`` whenever a step wins, and the later steps quantize
``x - min`` and divide by ``max - min`` with that new min, so the steps are sequential per block.
Speed: the search streams about sixteen (n, nb) float32 passes per step through numpy, so the work is cut
into cache-sized pieces (:data:`SEARCH_VALUES`) and everything per block (sums, scales, choices) is done
on (nb,) vectors.
"""
from __future__ import annotations

import numpy as np

from ._prims import F32, first_min, nearest_int, seq_sum


def make_qkx2_quants(x: np.ndarray, nmax: int, weights: np.ndarray, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx2_quants`` for each row of ``x`` ``(n_blocks, n)`` with ``weights`` of the same shape.

    Returns ``(scale, the_min, L)``: float32 ``(n_blocks,)``, float32 ``(n_blocks,)`` (ggml's positive
    ``*the_min = -min``) and uint8 ``(n_blocks, n)``.
    """
    xt = np.ascontiguousarray(np.asarray(x, dtype=F32).T)
    wt = np.ascontiguousarray(np.asarray(weights, dtype=F32).T)
    scale, the_min, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad)
    return scale, the_min, np.ascontiguousarray(lt.T)


def make_qkx3_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None, rmin: float = -0.9,
                     rdelta: float = 0.05, nstep: int = 36,
                     use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx3_quants``: :func:`make_qkx2_quants` where ``weights=None`` means ``x*x`` (the defaults
    are the arguments of ggml's weighted Q4_1/Q5_1/Q2_K/Q4_K/Q5_K encoders)."""
    xt = np.ascontiguousarray(np.asarray(x, dtype=F32).T)
    wt = xt * xt if weights is None else np.ascontiguousarray(np.asarray(weights, dtype=F32).T)
    scale, the_min, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad)
    return scale, the_min, np.ascontiguousarray(lt.T)


def _weighted_error(s, m, lf, xt, wt, use_mad, tmp):
    """sum_i w_i * err(s*l_i + m - x_i), err = |.| or ^2, in ggml's order; ``tmp`` is scratch (n, nb)."""
    np.multiply(lf, s, out=tmp)
    tmp += m
    tmp -= xt
    if use_mad:
        np.abs(tmp, out=tmp)
    else:
        np.square(tmp, out=tmp)
    tmp *= wt
    return seq_sum(tmp)


def quantize_levels(xt: np.ndarray, mn: np.ndarray, iscale: np.ndarray, nmax: int, mx: np.ndarray, xmin: np.ndarray,
                    out: np.ndarray) -> np.ndarray:
    """out = MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) as float32, for any (mn, iscale).

    np.rint equals nearest_int while |iscale*(x - min)| < 2^22, which the block extremes tell (a ggml min
    above the data's min, an overflowing range or iscale); otherwise ggml's bit trick is reproduced exactly.
    """
    np.subtract(xt, mn, out=out)
    out *= iscale
    if (iscale * np.maximum(mx - mn, mn - xmin) < _RINT_LIMIT).all():
        np.rint(out, out=out)
        np.clip(out, F32(0), F32(nmax), out=out)
    else:
        np.copyto(out, np.clip(nearest_int(out), 0, nmax), casting="unsafe")
    return out


_RINT_LIMIT = F32(4e6)  # below 2^22 = 4194304 with margin for the rounding of the bound itself


class _Geometry:
    """Per-block facts about the current ggml ``min`` that decide how a step's levels may be computed.

    A step quantizes ``t = (x - min) * iscale`` with ``iscale = c / (max - min)``.  Its largest value is
    about c, its smallest about ``c * (xmin - min) / (max - min)`` (negative when ggml's min lies above the
    data's).  So np.rint is exact when that stays far from 2^22, the top clamp is needed only when
    ``c > nmax + 0.49``, and the bottom clamp only in the few blocks where ``c * low < -0.49``.
    """

    def __init__(self, xt: np.ndarray, mx: np.ndarray, xmin: np.ndarray, nmax: int):
        self.xt, self.mx, self.xmin, self.nmax = xt, mx, xmin, nmax

    def update(self, mn: np.ndarray) -> None:
        self.mn = mn
        self.rng = self.mx - mn
        self.low = (self.xmin - mn) / self.rng
        self.lowest = float(self.low.min())
        finite = bool((self.rng > F32(1e-30)).all() and (self.rng < F32(3e38)).all())
        self.fast_coef = 0.9 * float(_RINT_LIMIT) / max(1.0, -self.lowest) if finite else -1.0

    def levels(self, c: np.float32, out: np.ndarray) -> np.ndarray:
        """The step's levels into ``out``; returns the iscale used (c / (max - min))."""
        iscale = c / self.rng
        if float(c) > self.fast_coef:
            quantize_levels(self.xt, self.mn, iscale, self.nmax, self.mx, self.xmin, out)
            return iscale
        np.subtract(self.xt, self.mn, out=out)
        out *= iscale
        np.rint(out, out=out)
        if float(c) > self.nmax + 0.49:
            np.clip(out, F32(0), F32(self.nmax), out=out)
        elif self.lowest * float(c) < -0.49:
            cols = np.flatnonzero(self.low < F32(-0.49 / float(c)))
            if 20 * cols.size > out.shape[1]:
                np.maximum(out, F32(0), out=out)
            else:
                out[:, cols] = np.maximum(out[:, cols], F32(0))
        return iscale


# Values per search piece: its (n, nb) float32 temporaries (about eight of 1 MiB) stay near the core while
# numpy's per-call overhead is spread over enough blocks (measured best on a 2 MiB-L2 / 32 MiB-L3 machine).
SEARCH_VALUES = 1 << 18


def qkx_search_t(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                 use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search on transposed data: ``xt``, ``wt`` float32 ``(n, nb)``; returns scale, the_min, L ``(n, nb)``.

    Large inputs are searched in cache-sized pieces of blocks (each block's search is independent).
    """
    n, nb = xt.shape
    cols = max(256, SEARCH_VALUES // max(n, 1))
    if nb <= cols:
        return _qkx_search_piece(xt, wt, nmax, rmin, rdelta, nstep, use_mad)
    scale, the_min = np.empty(nb, F32), np.empty(nb, F32)
    lev = np.empty((n, nb), np.uint8)
    for c0 in range(0, nb, cols):
        part = slice(c0, c0 + cols)
        scale[part], the_min[part], lev[:, part] = _qkx_search_piece(
            np.ascontiguousarray(xt[:, part]), np.ascontiguousarray(wt[:, part]), nmax, rmin, rdelta, nstep,
            use_mad)
    return scale, the_min, lev


def _qkx_search_piece(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                      use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`qkx_search_t` on one piece.

    make_qkx2_quants and make_qkx3_quants differ only in ``if (max == min)`` vs ``if (max <= min)`` (the same
    test, since min <= max always holds here) and in qkx3's NULL weights, handled by the callers.
    Instead of copying the winning levels at every step, the (iscale, min) that produced them are kept and
    the levels recomputed once at the end (the same float ops give the same levels).
    Longer than 60 lines because it follows the C function step by step.
    """
    n, nb = xt.shape
    xmin = xt.min(axis=0)
    mn = first_min(xt, lo=xmin.copy())             # the sign of a zero min is the first zero's, as in ggml
    mn = np.where(mn > 0, F32(0), mn)               # 'if (min > 0) min = 0' (keeps a -0.0)
    mx = xt.max(axis=0)
    sum_w = seq_sum(wt)
    sum_x = seq_sum(wt * xt)
    flat = mx == mn
    # flat blocks: L = 0, scale 0 (patched at the end); keep their numbers finite meanwhile
    flat_min = mn[flat]
    mx[flat], mn[flat], xmin[flat] = 1, 0, 0
    lx = np.empty((2, n, nb), F32)      # [levels, x]: one multiply gives w*l*l and w*l*x
    lx[1] = xt
    laux = lx[0]
    prod = np.empty((3, n, nb), F32)    # [w*l, w*l*l, w*l*x]: one reduction gives the three sums
    geo = _Geometry(xt, mx, xmin, nmax)
    geo.update(mn)
    fnmax = F32(nmax)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = geo.levels(fnmax, laux)
        scale = F32(1) / iscale
        best = _weighted_error(scale, mn, laux, xt, wt, use_mad, prod[0])
        best_iscale, best_mn = iscale, mn.copy()
        for step in range(nstep + 1):
            # ggml updates `min` whenever a step wins, and later steps quantize x - min with that min
            iscale = geo.levels(F32(rmin) + F32(rdelta) * F32(step) + fnmax, laux)
            np.multiply(wt, laux, out=prod[0])
            np.multiply(prod[0], lx, out=prod[1:])
            sum_l, sum_l2, sum_xl = seq_sum(prod, axis=1)
            d = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
            pos = this_min > 0
            if pos.any():
                np.putmask(this_min, pos, F32(0))
                np.putmask(this_scale, pos, sum_xl / sum_l2)
            cur = _weighted_error(this_scale, this_min, laux, xt, wt, use_mad, prod[0])
            better = (d > 0) & (cur < best)
            if better.any():
                np.putmask(best, better, cur)
                np.putmask(best_iscale, better, iscale)
                np.putmask(best_mn, better, mn)
                np.putmask(scale, better, this_scale)
                np.putmask(mn, better, this_min)
                geo.update(mn)
        quantize_levels(xt, best_mn, best_iscale, nmax, mx, xmin, laux)
    scale[flat] = 0
    mn[flat] = flat_min
    laux[:, flat] = 0
    return scale, -mn, laux.astype(np.uint8)
