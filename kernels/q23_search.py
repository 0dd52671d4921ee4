"""Vectorised ports of ggml's ``make_q3_quants`` and ``make_qp_quants`` (ggml-quants.c), bit-exact.

Each function works on many groups at once: ``x`` float32 ``(n_groups, n)``; the per-group state (sums, best
error, current scale) lives in ``(n_groups,)`` arrays and the loops run over the element index and the search
steps only, exactly in ggml's order, so every float32 rounding happens as in the C code:

* sums that ggml accumulates element by element start from ``0.0f`` and add one element at a time (never
  ``np.sum``: pairwise summation and a missing ``0.0f +`` would change the last bit or the sign of a zero);
* products keep the C evaluation order (``w*x[i]*l`` is ``(w*x)*l``);
* ``nearest_int`` is ggml's magic-number trick (round half to even inside its domain, and the same bits outside).

Inside, arrays are transposed to ``(n, n_groups)`` so that element ``i`` of every group is one contiguous row.
"""
from __future__ import annotations

import numpy as np

GROUP_MAX_EPS = np.float32(1e-15)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23
_F0 = np.float32(0.0)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: add 1.5*2^23 and read the low mantissa bits (int32, same bits as the C)."""
    return ((np.asarray(v, np.float32) + _MAGIC).view(np.int32) & 0x7FFFFF) - 0x400000


def seq_sum(rows: np.ndarray) -> np.ndarray:
    """``s = 0.0f; for i: s += rows[i]`` for every column: float32, strictly sequential."""
    s = np.zeros(rows.shape[1:], np.float32)
    for r in rows:
        s += r
    return s


def _first_absmax(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from amax = max = 0.

    The strict '>' keeps the first element of largest magnitude: walking the rows backwards, the last match wins.
    (Faster than ``argmax(axis=0)``, which numpy does not vectorise across columns.)
    """
    ax = np.abs(xt)
    amax = ax.max(axis=0)
    mx = np.zeros(xt.shape[1], np.float32)
    for i in range(xt.shape[0] - 1, -1, -1):
        np.copyto(mx, xt[i], where=ax[i] == amax)
    mx[amax == _F0] = _F0
    return amax, mx


def make_q3_quants(x: np.ndarray, nmax: int, do_rmse: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_q3_quants(n, nmax, x, L, do_rmse)`` for every row of ``x`` (float32 ``(n_groups, n)``).

    Returns ``(scale (n_groups,) float32, L uint8 (n_groups, n))`` with ``L`` in ``[0, 2*nmax)`` (all zero for a
    group whose largest magnitude is below ``GROUP_MAX_EPS``, as in ggml).
    """
    xt = np.ascontiguousarray(np.asarray(x, np.float32).T)
    n, ng = xt.shape
    amax, mx = _first_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        iscale = np.float32(-nmax) / mx
        L = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
        if do_rmse:
            scale = _q3_rmse(xt, L, nmax)
        else:
            scale = np.float32(1.0) / iscale
    L = (L + nmax).astype(np.uint8)
    L[:, zero] = 0
    scale = np.where(zero, _F0, scale).astype(np.float32)
    return scale, np.ascontiguousarray(L.T)


def _q3_rmse(xt: np.ndarray, L: np.ndarray, nmax: int) -> np.ndarray:
    """The ``do_rmse`` branch: weighted sums, then up to 5 passes of one-element-at-a-time refinement.

    ``L`` (int32 ``(n, n_groups)``, values in ``[-nmax, nmax)``) is updated in place.  A group whose pass
    changes nothing would change nothing in the next pass either (its state is the same), which is ggml's
    ``break``: so each pass runs only on the groups the previous pass changed (typically ~20%, then ~5%, ...).
    """
    w = xt * xt
    wx = w * xt
    Lf = L.astype(np.float32)
    wxl = wx * Lf                                 # w*x[i]*L[i], kept up to date as L changes
    wl2 = (w * Lf) * Lf                           # w*L[i]*L[i]
    sumlx = seq_sum(wxl)
    suml2 = seq_sum(wl2)
    chg = _q3_pass(xt, w, wx, L, wxl, wl2, sumlx, suml2, -nmax, nmax - 1)
    act = np.flatnonzero(chg)
    for _itry in range(4):
        if act.size == 0:
            break
        # the active groups only; w, w*x and the products are recomputed (same float ops, same values)
        xa, La = np.take(xt, act, axis=1), np.take(L, act, axis=1)
        wa = xa * xa
        wxa = wa * xa
        Lfa = La.astype(np.float32)
        sx, s2 = sumlx[act], suml2[act]
        chg = _q3_pass(xa, wa, wxa, La, wxa * Lfa, (wa * Lfa) * Lfa, sx, s2, -nmax, nmax - 1)
        L[:, act], sumlx[act], suml2[act] = La, sx, s2
        act = act[chg]
    return np.where(suml2 > _F0, sumlx / suml2, _F0).astype(np.float32)


def _q3_pass(xt, w, wx, L, wxl, wl2, sumlx, suml2, lo: int, hi: int) -> np.ndarray:
    """One refinement pass over the elements of every group (arrays updated in place); returns 'changed'."""
    chg = np.zeros(xt.shape[1], bool)
    for i in range(xt.shape[0]):
        slx = sumlx - wxl[i]
        sl2 = suml2 - wl2[i]
        new_l = np.clip(nearest_int((xt[i] * sl2) / slx), lo, hi)
        idx = np.flatnonzero((slx > _F0) & (new_l != L[i]))
        if idx.size == 0:
            continue
        nl = new_l[idx]
        nlf = nl.astype(np.float32)
        wxn = wx[i, idx] * nlf
        wn2 = (w[i, idx] * nlf) * nlf
        s1 = slx[idx] + wxn
        s2 = sl2[idx] + wn2
        slx0, sl20 = sumlx[idx], suml2[idx]
        acc = (s2 > _F0) & ((s1 * s1) * sl20 > (slx0 * slx0) * s2)
        a = idx[acc]
        L[i, a] = nl[acc]
        wxl[i, a] = wxn[acc]
        wl2[i, a] = wn2[acc]
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
    n, ng = xt.shape
    mx = np.maximum(xt.max(axis=0), _F0)          # MAX(max, x[i]) from 0: only used when >= GROUP_MAX_EPS
    zero = mx < GROUP_MAX_EPS
    fmax = np.float32(nmax)
    with np.errstate(all="ignore"):
        iscale = fmax / mx
        L8 = nearest_int(iscale * xt) & 0xFF      # stored in uint8_t L[]
        scale = np.float32(1.0) / iscale
        diff = xt - scale * L8.astype(np.float32)
        best = seq_sum((qw * diff) * diff)
        steps = [s for s in range(-4, 5) if s != 0]
        # all 8 trial scales at once: (8, n, n_groups), summed sequentially over n
        isc = ((np.float32(0.1) * np.array(steps, np.float32) + fmax)[:, None] / mx[None, :]).astype(np.float32)
        sc = (np.float32(1.0) / isc)[:, None, :]
        lt = np.minimum(nmax, nearest_int(isc[:, None, :] * xt[None])).astype(np.float32)
        dt = xt[None] - sc * lt
        mse = np.zeros((len(steps), ng), np.float32)
        for i in range(n):
            mse += (qw[i] * dt[:, i]) * dt[:, i]
        for k in range(len(steps)):               # sequential 'if (mse < best_mse)' in ggml's order
            better = mse[k] < best
            best = np.where(better, mse[k], best)
            iscale = np.where(better, isc[k], iscale)
        scale, L8 = _qp_refine(xt, qw, iscale, nmax)
    L8[:, zero] = 0
    scale = np.where(zero, _F0, scale).astype(np.float32)
    return scale, np.ascontiguousarray(L8.T.astype(np.uint8))


def _qp_refine(xt: np.ndarray, qw: np.ndarray, iscale: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Final levels at the chosen ``iscale`` and ggml's 5 refinement passes (see ``_q3_rmse`` on the early stop)."""
    l = np.minimum(nmax, nearest_int(iscale * xt))
    lf = l.astype(np.float32)
    wx = qw * xt
    sumlx = seq_sum(wx * lf)
    suml2 = seq_sum((qw * lf) * lf)
    L = l & 0xFF                                  # uint8_t L[]; the sums above used the int l
    for _itry in range(5):
        changed = False
        for i in range(xt.shape[0]):
            li = L[i]
            lif = li.astype(np.float32)
            slx = sumlx - wx[i] * lif
            sl2 = suml2 - (qw[i] * lif) * lif
            new_l = np.minimum(nmax, nearest_int((xt[i] * sl2) / slx))
            cand = (slx > _F0) & (sl2 > _F0) & (new_l != li)
            if not cand.any():
                continue
            nlf = new_l.astype(np.float32)
            slx = slx + wx[i] * nlf
            sl2 = sl2 + (qw[i] * nlf) * nlf
            acc = cand & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            if not acc.any():
                continue
            changed = True
            L[i] = np.where(acc, new_l & 0xFF, li)
            sumlx = np.where(acc, slx, sumlx)
            suml2 = np.where(acc, sl2, suml2)
        if not changed:
            break
    return np.where(suml2 > _F0, sumlx / suml2, _F0).astype(np.float32), L
