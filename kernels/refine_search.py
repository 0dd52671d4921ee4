"""ggml's ``make_q3_quants`` and ``make_qp_quants``: a first guess, then coordinate-descent refinement passes.

``make_q3_quants`` picks Q3_K's group scales (no imatrix); ``make_qp_quants`` quantizes a super-block's
scales and mins against their summed importance (the imatrix encoders of Q2_K, Q4_K and Q5_K).  Both refine
their levels element by element in up to five passes (:func:`_refine`), which is why they share a module.

Each function works on many groups at once; the per-group state (sums, best error, current scale) lives in
``(n_groups,)`` arrays and the loops run over the element index and the search steps only, in ggml's order, so
every float32 rounding happens as in the C code:

* sums that ggml accumulates element by element start from ``0.0f`` and add one element at a time
  (:func:`~kernels._prims.seq_sum`);
* products keep the C evaluation order (``w*x[i]*l`` is ``(w*x)*l``);
* ``nearest_int`` is ggml's magic-number trick (round half to even inside its domain, and the same bits outside).

The cores work on *transposed* data ``(n, n_groups)`` (row ``i`` = element ``i`` of every group, contiguous);
the public ``make_*`` wrappers take ``(n_groups, n)`` like the C functions' one group per call.
"""
from __future__ import annotations

import numpy as np

from ._prims import GROUP_MAX_EPS, clip_nearest, max_macro_zero, nearest_int, seq_sum, signed_absmax

_F0 = np.float32(0.0)


def make_q3_quants(x: np.ndarray, nmax: int, do_rmse: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_q3_quants(n, nmax, x, L, do_rmse)`` for every row of ``x`` (float32 ``(n_groups, n)``).

    Returns ``(scale (n_groups,) float32, L uint8 (n_groups, n))`` with ``L`` in ``[0, 2*nmax)`` (all zero for a
    group whose largest magnitude is below ``GROUP_MAX_EPS``, as in ggml).
    """
    scale, lt = make_q3_quants_t(np.ascontiguousarray(np.asarray(x, np.float32).T), nmax, do_rmse)
    return scale, np.ascontiguousarray(lt.T)


def make_q3_quants_t(xt: np.ndarray, nmax: int, do_rmse: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_q3_quants` on transposed data ``xt`` ``(n, n_groups)``; returns ``L`` as ``(n, n_groups)``."""
    amax, mx = signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        iscale = np.float32(-nmax) / mx
        L = clip_nearest(iscale * xt, -nmax, nmax - 1)
        scale = _q3_rmse(xt, L, nmax) if do_rmse else np.float32(1.0) / iscale
    Lu = L.astype(np.uint8)
    Lu += np.uint8(nmax)                          # -nmax..nmax-1 -> 0..2*nmax-1 (uint8 wrap-around)
    if zero.any():
        Lu[:, zero] = 0
        scale = np.where(zero, _F0, scale)
    return scale.astype(np.float32), Lu


def _q3_rmse(xt: np.ndarray, L: np.ndarray, nmax: int) -> np.ndarray:
    """The ``do_rmse`` branch: weighted sums, then up to 5 refinement passes; ``L`` is updated in place."""
    w = xt * xt
    return _refine(xt, w, L, -nmax, nmax - 1, q3=True)


def _refine(xt, w, L, lo: int | None, hi: int, q3: bool) -> np.ndarray:
    """ggml's sums and ``for (itry < 5)`` loop of make_q3_quants (``q3``, ``w = x*x``) / make_qp_quants.

    ``L`` int32 ``(n, n_groups)`` is updated in place; returns the scale.  A group whose pass changes nothing
    would change nothing in the next pass either (its state is the same), which is ggml's ``break``: so each
    pass after the first runs only on the groups the previous pass changed (typically ~20% of them, then ~5%,
    ...), gathered into compact arrays; the products are recomputed there (same float ops, same values).
    """
    wx, wxl, wl2 = _products(xt, w, L)
    sumlx, suml2 = seq_sum(wxl), seq_sum(wl2)
    chg = _pass(xt, w, wx, L, wxl, wl2, sumlx, suml2, lo, hi, q3)
    act = np.flatnonzero(chg)
    xa, La, sx, s2 = np.take(xt, act, axis=1), np.take(L, act, axis=1), sumlx[act], suml2[act]
    wa = None if q3 else np.take(w, act, axis=1)
    fin_idx, fin_L = [], []
    for _itry in range(4):
        if act.size == 0:
            break
        if q3:
            wa = xa * xa
        wxa, wxla, wl2a = _products(xa, wa, La)
        chg = _pass(xa, wa, wxa, La, wxla, wl2a, sx, s2, lo, hi, q3)
        done, keep = np.flatnonzero(~chg), np.flatnonzero(chg)
        fin_idx.append(act[done])
        fin_L.append(np.take(La, done, axis=1))
        sumlx[act[done]], suml2[act[done]] = sx[done], s2[done]
        act, sx, s2 = act[keep], sx[keep], s2[keep]
        xa, La = np.take(xa, keep, axis=1), np.take(La, keep, axis=1)
        if not q3:
            wa = np.take(wa, keep, axis=1)
    sumlx[act], suml2[act] = sx, s2
    idx = np.concatenate(fin_idx + [act])
    if idx.size:
        L[:, idx] = np.concatenate(fin_L + [La], axis=1)
    return np.where(suml2 > _F0, sumlx / suml2, _F0)


def _products(xt, w, L):
    """``w*x``, ``w*x*L`` and ``w*L*L`` in ggml's evaluation order."""
    wx = w * xt
    Lf = L.astype(np.float32)
    wl2 = w * Lf
    wl2 *= Lf
    return wx, wx * Lf, wl2


def _pass(xt, w, wx, L, wxl, wl2, sumlx, suml2, lo: int | None, hi: int, q3: bool) -> np.ndarray:
    """One pass over the elements of every group (arrays updated in place); returns which groups changed.

    make_q3_quants: ``if (slx > 0)`` ... accept if ``sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2`` (new sums);
    make_qp_quants: ``if (slx > 0 && sl2 > 0)`` (old sums) ... ``MIN(nmax, l)`` only, ``L`` is a uint8_t.
    The candidates (level would change) are few, so the acceptance test runs on their indices only.
    """
    chg = np.zeros(xt.shape[1], bool)
    slx, sl2, v = (np.empty(xt.shape[1], np.float32) for _ in range(3))
    for i in range(xt.shape[0]):
        np.subtract(sumlx, wxl[i], out=slx)
        np.subtract(suml2, wl2[i], out=sl2)
        np.multiply(xt[i], sl2, out=v)
        np.divide(v, slx, out=v)
        if lo is None:
            new_l = np.minimum(nearest_int(v), hi)
        else:
            new_l = clip_nearest(v, lo, hi)
        cand = slx > _F0
        if not q3:
            cand &= sl2 > _F0
        cand &= new_l != L[i]
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            continue
        nl = new_l[idx]
        nlf = nl.astype(np.float32)
        s1 = slx[idx] + wx[i, idx] * nlf
        s2 = sl2[idx] + (w[i, idx] * nlf) * nlf
        slx0 = sumlx[idx]
        acc = (s1 * s1) * suml2[idx] > (slx0 * slx0) * s2
        if q3:
            acc &= s2 > _F0
        a = idx[acc]
        la = nl[acc] if q3 else nl[acc] & 0xFF     # uint8_t L[i] = new_l
        laf = la.astype(np.float32)
        L[i, a] = la
        wxl[i, a] = wx[i, a] * laf
        wl2[i, a] = (w[i, a] * laf) * laf
        sumlx[a] = s1[acc]
        suml2[a] = s2[acc]
        chg[a] = True
    return chg


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qp_quants(n, nmax, x, L, quant_weights)`` for every row of ``x`` (float32 ``(n_groups, n)``).

    Returns ``(scale (n_groups,) float32, L uint8 (n_groups, n))``; ``L`` holds what ggml's ``uint8_t L[]``
    holds (a negative level wraps modulo 256, as the C store does).
    """
    xt = np.ascontiguousarray(np.asarray(x, np.float32).T)
    qw = np.ascontiguousarray(np.asarray(quant_weights, np.float32).T)
    scale, lt = make_qp_quants_t(xt, nmax, qw)
    return scale, np.ascontiguousarray(lt.T)


def make_qp_quants_t(xt: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_qp_quants` on transposed data ``xt``, ``qw`` ``(n, n_groups)``; ``L`` as ``(n, n_groups)``."""
    n, ng = xt.shape
    mx = max_macro_zero(xt)                       # 'max = MAX(max, x[i])' from 0
    zero = mx < GROUP_MAX_EPS
    fmax = np.float32(nmax)
    with np.errstate(all="ignore"):
        iscale = fmax / mx
        scale = np.float32(1.0) / iscale
        diff = xt - scale * (nearest_int(iscale * xt) & 0xFF).astype(np.float32)   # L[i] is a uint8_t
        best = seq_sum((qw * diff) * diff)
        steps = [s for s in range(-4, 5) if s != 0]
        # the 8 trial scales at once: (8, n, n_groups), summed sequentially over n
        isc = (np.float32(0.1) * np.array(steps, np.float32) + fmax)[:, None] / mx[None, :]
        sc = (np.float32(1.0) / isc)[:, None, :]
        lt = np.minimum(nearest_int(isc[:, None, :] * xt[None]), nmax).astype(np.float32)
        dt = xt[None] - sc * lt
        mse = seq_sum((qw * dt) * dt, axis=1)     # (8, n_groups)
        for k in range(len(steps)):               # ggml's 'if (mse < best_mse)' in step order
            better = mse[k] < best
            best = np.where(better, mse[k], best)
            iscale = np.where(better, isc[k], iscale)
        L = np.minimum(nearest_int(iscale * xt), nmax)
        L[:, zero] = 0                            # (their result is 0 anyway; keeps them off the slow path)
        scale = _qp_refine(xt, qw, L, nmax)
    if zero.any():
        L[:, zero] = 0
        scale = np.where(zero, _F0, scale)
    return scale.astype(np.float32), L.astype(np.uint8)


def _qp_refine(xt: np.ndarray, qw: np.ndarray, L: np.ndarray, nmax: int) -> np.ndarray:
    if (L < 0).any():
        # a negative level (negative x): ggml's sums use the int level, L[] keeps it modulo 256; follow that
        # literally on this rare path
        return _qp_refine_wrapped(xt, qw, L, nmax)
    return _refine(xt, qw, L, None, nmax, q3=False)


def _qp_refine_wrapped(xt: np.ndarray, qw: np.ndarray, L: np.ndarray, nmax: int) -> np.ndarray:
    lf = L.astype(np.float32)
    wx = qw * xt
    sumlx, suml2 = seq_sum(wx * lf), seq_sum((qw * lf) * lf)
    L &= 0xFF
    Lf = L.astype(np.float32)
    wxl, wl2 = wx * Lf, (qw * Lf) * Lf
    for _itry in range(5):
        if not _pass(xt, qw, wx, L, wxl, wl2, sumlx, suml2, None, nmax, q3=False).any():
            break
    return np.where(suml2 > _F0, sumlx / suml2, _F0)
