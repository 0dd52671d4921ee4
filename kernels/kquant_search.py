"""ggml's scale/min searches for the k-quants with a min (Q2_K, Q4_K, Q5_K), vectorised across blocks.

``make_qkx2_quants`` / ``make_qkx3_quants`` mirror the C functions of ``ggml-quants.c`` bit for bit;
``make_qp_quants`` mirrors the one that quantizes a super-block's scales (imatrix encoders).

Layout: the cores work on *transposed* data ``(n, n_blocks)`` (element index first) so that
``np.add.reduce(..., axis=0)`` adds the n elements one after another, the order ggml's scalar loops use
(numpy only sums pairwise along the contiguous last axis).  The public wrappers take ``(n_blocks, n)``.

Rounding: ggml's ``nearest_int`` adds 1.5*2^23 and reads the mantissa, i.e. round-half-even for
``|v| < 2^22`` and garbage (reproduced by :func:`nearest_int`) beyond.  Inside the searches the argument
``iscale*(x - min)`` stays within a few units of ``[0, nmax]`` for finite ranges, so ``np.rint`` is used
there; blocks that could leave that range (subnormal or overflowing ranges) switch to the bit trick.

A quirk the port keeps: make_qkx2/3_quants overwrite ``min`` whenever a step wins, and the later steps
quantize ``x - min`` and divide by ``max - min`` with that new min, so the steps are sequential per block.
Speed: the search streams about sixteen (n, nb) float32 passes per step through numpy, so the work is cut
into cache-sized pieces (:data:`SEARCH_VALUES`) and everything per block (sums, scales, choices) is done
on (nb,) vectors.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
_MAGIC = F32(12582912.0)  # 1.5 * 2**23
_MANT = np.int32(0x007FFFFF)
_HALF = np.int32(0x00400000)
# numpy scalars, not Python ints: array-op-Python-int takes a slow path (about 10x) in numpy 2


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` (float32 -> int32), including its behaviour for huge/non-finite input."""
    bits = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    bits &= _MANT
    bits -= _HALF
    return bits


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx2_quants`` for each row of ``x`` ``(n_blocks, n)`` with ``weights`` of the same shape.

    Returns ``(scale, the_min, L)``: float32 ``(n_blocks,)``, float32 ``(n_blocks,)`` (ggml's positive
    ``*the_min = -min``) and uint8 ``(n_blocks, n)``.
    """
    xt = np.ascontiguousarray(np.asarray(x, dtype=F32).T)
    wt = np.ascontiguousarray(np.asarray(weights, dtype=F32).T)
    scale, the_min, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad)
    return scale, the_min, np.ascontiguousarray(lt.T)


def make_qkx3_quants(x: np.ndarray, weights: np.ndarray | None, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx3_quants``; like :func:`make_qkx2_quants` but ``weights=None`` means ``x*x``."""
    xt = np.ascontiguousarray(np.asarray(x, dtype=F32).T)
    wt = xt * xt if weights is None else np.ascontiguousarray(np.asarray(weights, dtype=F32).T)
    scale, the_min, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad)
    return scale, the_min, np.ascontiguousarray(lt.T)


def seq_sum(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sequential sum over ``axis`` (ggml's ``float s = 0; for (i) s += a[i]``), never the last axis.

    numpy reduces a non-contiguous axis element after element (and sums pairwise only along the contiguous
    axis); with a single column the reduced axis *is* the contiguous one, so that case is summed by hand.
    """
    if a.shape[-1] > 1:
        return np.add.reduce(a, axis=axis)
    a = np.moveaxis(a, axis, 0)
    acc = a[0].copy()
    for i in range(1, a.shape[0]):
        acc += a[i]
    return acc


def seq_sum0(a: np.ndarray) -> np.ndarray:
    """:func:`seq_sum` over axis 0."""
    return seq_sum(a, 0)


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
    return seq_sum0(tmp)


def quantize_levels(xt, mn, iscale, nmax, mx, xmin, out):
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
    mn = np.minimum(xmin, F32(0))
    mx = xt.max(axis=0)
    sum_w = seq_sum0(wt)
    sum_x = seq_sum0(wt * xt)
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


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qp_quants`` on transposed data: ``x``, ``quant_weights`` float32 ``(n, nb)``.

    Returns ``(scale (nb,), L uint8 (n, nb))``.  Negative levels wrap modulo 256 as ggml's ``uint8_t L[]``
    does; they only occur for negative inputs, which the callers never produce in practice.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    w = np.ascontiguousarray(quant_weights, dtype=F32)
    n, nb = x.shape
    mx = np.zeros(nb, F32)
    for i in range(n):
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < F32(1e-15)
    mx[zero] = 1
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = _qp_best_iscale(x, w, nmax, mx)
        lev = np.minimum(nearest_int(iscale * x), nmax)        # int levels; L[] holds them modulo 256
        lf = lev.astype(F32)
        wx = w * x
        sumlx = seq_sum0(wx * lf)
        suml2 = seq_sum0(w * lf * lf)
        lw = lev & 0xFF
        _qp_refine(x, w, wx, lw, sumlx, suml2, nmax)
        result = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    result[zero] = 0
    lw[:, zero] = 0
    return result, lw.astype(np.uint8)


def _qp_best_iscale(x: np.ndarray, w: np.ndarray, nmax: int, mx: np.ndarray) -> np.ndarray:
    """make_qp_quants' first part: the iscale of nmax/max and its eight neighbours with the least error."""
    iscale = F32(nmax) / mx
    scale = F32(1) / iscale
    lw = (nearest_int(iscale * x) & 0xFF).astype(F32)        # the first pass reads L[] back as uint8
    diff = x - scale * lw
    best = seq_sum0(w * diff * diff)
    steps = np.array([-4, -3, -2, -1, 1, 2, 3, 4], F32)
    iscale_is = (F32(0.1) * steps + F32(nmax))[:, None] / mx  # (8, nb)
    scale_is = F32(1) / iscale_is
    lev = np.minimum(nearest_int(iscale_is[:, None] * x), nmax).astype(F32)   # (8, n, nb)
    diff = x - scale_is[:, None] * lev
    mse = seq_sum(w * diff * diff, axis=1)                     # (8, nb)
    for k in range(len(steps)):
        upd = mse[k] < best
        best = np.where(upd, mse[k], best)
        iscale = np.where(upd, iscale_is[k], iscale)
    return iscale


def _qp_refine(x, w, wx, lw, sumlx, suml2, nmax) -> None:
    """make_qp_quants' coordinate-descent passes (in place on lw, sumlx, suml2).

    A block in which a pass changes nothing is finished (the next pass would see the same state), so each
    pass runs only on the blocks the previous one changed.
    """
    active = np.arange(x.shape[1])
    for _ in range(5):
        xa, wa, wxa, la = x[:, active], w[:, active], wx[:, active], lw[:, active]
        slx_a, sl2_a = sumlx[active], suml2[active]
        changed = np.zeros(active.size, bool)
        for i in range(x.shape[0]):
            lf = la[i].astype(F32)
            slx = slx_a - wxa[i] * lf
            sl2 = sl2_a - wa[i] * lf * lf
            new_l = np.minimum(nearest_int(xa[i] * sl2 / slx), nmax)
            cand = (slx > 0) & (sl2 > 0) & (new_l != la[i])
            if not cand.any():
                continue
            nf = new_l.astype(F32)
            slx = slx + wxa[i] * nf
            sl2 = sl2 + wa[i] * nf * nf
            acc = cand & (slx * slx * sl2_a > slx_a * slx_a * sl2)
            la[i] = np.where(acc, new_l & 0xFF, la[i])
            slx_a = np.where(acc, slx, slx_a)
            sl2_a = np.where(acc, sl2, sl2_a)
            changed |= acc
        lw[:, active], sumlx[active], suml2[active] = la, slx_a, sl2_a
        active = active[changed]
        if not active.size:
            break
