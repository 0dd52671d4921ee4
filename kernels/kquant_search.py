"""ggml's scale/min searches for the k-quants with a min (Q2_K, Q4_K, Q5_K), vectorised across blocks.

``make_qkx2_quants`` / ``make_qkx3_quants`` mirror the C functions of ``ggml-quants.c`` bit for bit;
``make_qp_quants`` mirrors the one that quantizes a super-block's scales (imatrix encoders).

Layout: the cores work on *transposed* data ``(n, n_blocks)`` (element index first) so that
``np.add.reduce(..., axis=0)`` adds the n elements one after another, the order ggml's scalar loops use
(numpy only sums pairwise along the contiguous last axis).  The public wrappers take ``(n_blocks, n)``.

Rounding: ggml's ``nearest_int`` adds 1.5*2^23 and reads the mantissa, i.e. round-half-even for
``|v| < 2^22`` and garbage (reproduced by :func:`nearest_int`) beyond; inside the searches the argument is
``iscale*(x - min)`` in ``[0, nmax + 2]`` whenever ``iscale`` is finite, so ``np.rint`` is used there.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
_MAGIC = F32(12582912.0)  # 1.5 * 2**23


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` (float32 -> int32), including its behaviour for huge/non-finite input."""
    bits = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


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


def seq_sum0(a: np.ndarray) -> np.ndarray:
    """Sequential sum over axis 0 (ggml's ``float s = 0; for (i) s += a[i]``).

    numpy reduces a non-contiguous axis element after element; with a single column the axis *is* contiguous
    and numpy would sum pairwise, so that case is summed by hand.
    """
    if a.shape[-1] > 1:
        return np.add.reduce(a, axis=0)
    acc = a[0].copy()
    for i in range(1, a.shape[0]):
        acc += a[i]
    return acc


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


def _quantize_levels(xt, mn, iscale, nmax, mx, xmin, out):
    """out = MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) as float32.

    np.rint equals nearest_int while |iscale*(x - min)| < 2^22, which the block extremes tell (a ggml min
    above the data's min, an overflowing range or iscale); otherwise ggml's bit trick is reproduced exactly.
    """
    np.subtract(xt, mn, out=out)
    out *= iscale
    if (iscale * np.maximum(mx - mn, mn - xmin) < F32(4e6)).all():
        np.rint(out, out=out)
        np.clip(out, F32(0), F32(nmax), out=out)
    else:
        np.copyto(out, np.clip(nearest_int(out), 0, nmax), casting="unsafe")
    return out


def qkx_search_t(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                 use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search on transposed data: ``xt``, ``wt`` float32 ``(n, nb)``; returns scale, the_min, L ``(n, nb)``.

    make_qkx2_quants and make_qkx3_quants differ only in ``if (max == min)`` vs ``if (max <= min)`` (the same
    test, since min <= max always holds here) and in qkx3's NULL weights, handled by the callers.
    Instead of copying the winning levels at every step, the (iscale, min) that produced them are kept and
    the levels recomputed once at the end (the same float ops give the same levels).
    Longer than 60 lines because it follows the C function step by step.
    """
    xmin = xt.min(axis=0)
    mn = np.minimum(xmin, F32(0))
    mx = xt.max(axis=0)
    sum_w = seq_sum0(wt)
    sum_x = seq_sum0(wt * xt)
    flat = mx == mn
    # flat blocks: L = 0, scale 0 (patched at the end); keep their numbers finite meanwhile
    flat_min = mn[flat]
    mx[flat], mn[flat], xmin[flat] = 1, 0, 0
    laux = np.empty_like(xt)
    wl = np.empty_like(xt)
    tmp = np.empty_like(xt)
    fnmax = F32(nmax)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = fnmax / (mx - mn)
        scale = F32(1) / iscale
        best_iscale, best_mn = iscale, mn
        _quantize_levels(xt, mn, iscale, nmax, mx, xmin, laux)
        best = _weighted_error(scale, mn, laux, xt, wt, use_mad, tmp)
        for step in range(nstep + 1):
            # ggml updates `min` whenever a step wins, and later steps quantize x - min with that min
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + fnmax) / (mx - mn)
            _quantize_levels(xt, mn, iscale, nmax, mx, xmin, laux)
            np.multiply(wt, laux, out=wl)
            sum_l = seq_sum0(wl)
            np.multiply(wl, laux, out=tmp)
            sum_l2 = seq_sum0(tmp)
            np.multiply(wl, xt, out=tmp)
            sum_xl = seq_sum0(tmp)
            d = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
            pos = this_min > 0
            if pos.any():
                this_min[pos] = 0
                this_scale[pos] = sum_xl[pos] / sum_l2[pos]
            cur = _weighted_error(this_scale, this_min, laux, xt, wt, use_mad, tmp)
            better = (d > 0) & (cur < best)
            if better.any():
                best = np.where(better, cur, best)
                best_iscale = np.where(better, iscale, best_iscale)
                best_mn = np.where(better, mn, best_mn)
                scale = np.where(better, this_scale, scale)
                mn = np.where(better, this_min, mn)
        _quantize_levels(xt, best_mn, best_iscale, nmax, mx, xmin, laux)
    scale[flat] = 0
    mn[flat] = flat_min
    laux[:, flat] = 0
    return scale, -mn, laux.astype(np.uint8)


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qp_quants`` on transposed data: ``x``, ``quant_weights`` float32 ``(n, nb)``.

    Returns ``(scale (nb,), L uint8 (n, nb))``.  Negative levels wrap modulo 256 as ggml's ``uint8_t L[]``
    does; they only occur for negative inputs, which the callers never produce in practice.
    """
    x = np.asarray(x, dtype=F32)
    w = np.asarray(quant_weights, dtype=F32)
    n, nb = x.shape
    mx = np.zeros(nb, F32)
    for i in range(n):
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < F32(1e-15)
    mx[zero] = 1
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = F32(nmax) / mx
        lw = nearest_int(iscale * x) & 0xFF  # L[i] = nearest_int(...) stored in uint8
        scale = F32(1) / iscale
        best = np.zeros(nb, F32)
        for i in range(n):
            diff = x[i] - scale * lw[i].astype(F32)
            best += w[i] * diff * diff
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            scale_is = F32(1) / iscale_is
            mse = np.zeros(nb, F32)
            for i in range(n):
                li = np.minimum(nearest_int(iscale_is * x[i]), nmax)
                diff = x[i] - scale_is * li.astype(F32)
                mse += w[i] * diff * diff
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, iscale_is, iscale)
        sumlx = np.zeros(nb, F32)
        suml2 = np.zeros(nb, F32)
        lw = np.empty((n, nb), np.int32)
        for i in range(n):
            li = np.minimum(nearest_int(iscale * x[i]), nmax)
            lw[i] = li & 0xFF
            lf = li.astype(F32)
            sumlx += w[i] * x[i] * lf
            suml2 += w[i] * lf * lf
        for _ in range(5):
            changed = False
            for i in range(n):
                wi, xi = w[i], x[i]
                lf = lw[i].astype(F32)
                slx = sumlx - wi * xi * lf
                sl2 = suml2 - wi * lf * lf
                new_l = np.minimum(nearest_int(xi * sl2 / slx), nmax)
                cand = (slx > 0) & (sl2 > 0) & (new_l != lw[i])
                if not cand.any():
                    continue
                nf = new_l.astype(F32)
                slx = slx + wi * xi * nf
                sl2 = sl2 + wi * nf * nf
                acc = cand & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if acc.any():
                    changed = True
                    lw[i] = np.where(acc, new_l & 0xFF, lw[i])
                    sumlx = np.where(acc, slx, sumlx)
                    suml2 = np.where(acc, sl2, suml2)
            if not changed:
                break
        result = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    result[zero] = 0
    lw[:, zero] = 0
    return result, lw.astype(np.uint8)
