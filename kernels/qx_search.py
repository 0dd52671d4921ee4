"""ggml's per-group scale searches (``make_qx_quants``, ``make_qkx3_quants``), vectorised across groups.

Both work on a *transposed* chunk ``xt`` of shape ``(n, m)``: row ``i`` holds element ``i`` of ``m`` groups, so
ggml's sequential per-group sums ``s += t[i]`` become ``seq_sum0(t)`` (numpy accumulates row by row along a
non-contiguous axis, i.e. in exactly ggml's order; tests check this against an explicit loop) and every
other step is one whole-array float32 ufunc.  Chunks keep the working set in L2.
"""
from __future__ import annotations

import functools

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
# np.clip's Python wrapper costs ~1.5 us a call; its ufunc is public in numpy >= 2 only under _core.
_clip = getattr(getattr(np, "_core", None), "umath", np).clip
_CHUNK_ELEMS = 1 << 15  # elements of x per chunk: x, w*x, w and the temporaries stay in a 1 MB L2
_SUPER_ELEMS = 1 << 18  # elements of x per block of groups whose trials are chosen together
# make_qkx3_quants' search carries state from trial to trial (~40 small per-group ops each), so its chunks are
# larger: per-call overheads matter more there than L2 misses (measured).
_QKX3_CHUNK_ELEMS = 1 << 18


def seq_sum0(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ggml's ``float s = 0; for (i) s += a[i]`` over axis 0 of a 2-D ``a``, for each column.

    numpy reduces a non-contiguous axis row after row; but with a single column the reduced axis becomes the
    contiguous one and numpy would sum it pairwise, so that case accumulates explicitly."""
    if a.shape[1] > 1:
        return np.add.reduce(a, axis=0, out=out, initial=F32(0))
    r = np.add.accumulate(a, axis=0)[-1] + F32(0)  # + 0: ggml starts from +0.0 (all -0.0 terms sum to +0.0)
    if out is None:
        return r
    out[...] = r
    return out


def signed_absmax(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``xt``: ``(amax, max)`` as ggml's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }``
    starting from ``amax = max = 0`` computes them: ``max`` is the first value of largest magnitude (+0 if all
    values are zero)."""
    pos = xt.max(axis=0)
    neg = xt.min(axis=0)
    if np.isnan(pos).any():  # fabsf(NaN) > amax is false: NaN never wins, like 0 (scales can be NaN)
        xt = np.where(np.isnan(xt), F32(0), xt)
        pos, neg = xt.max(axis=0), xt.min(axis=0)
    nneg = -neg
    amax = np.maximum(pos, nneg)
    mx = np.where(nneg > pos, neg, pos)
    mx += F32(0)  # -0.0 -> +0.0 (an all-zero group keeps ggml's initial +0)
    tie = (pos == nneg) & (pos > 0)  # +a and -a both present: the first one wins
    if tie.any():
        sub = xt[:, tie]
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        mx[tie] = sub[first, np.arange(sub.shape[1])]
    return amax, mx


def first_min(xt: np.ndarray) -> np.ndarray:
    """Per column: ggml's ``if (v < min) min = v`` from the first element (the first zero's sign if min is 0)."""
    mn = xt.min(axis=0)
    z = mn == 0
    if z.any():
        sub = xt[:, z]
        mn[z] = sub[np.argmax(sub == 0, axis=0), np.arange(sub.shape[1])]
    return mn


def _weights(xt: np.ndarray, rmse_type: int, qwt: np.ndarray | None) -> np.ndarray:
    if qwt is not None:
        return qwt
    if rmse_type == 1:
        return xt * xt
    if rmse_type == 2:
        return np.ones_like(xt)
    if rmse_type == 3:
        return np.abs(xt)
    return np.sqrt(np.abs(xt))


def nearest_int(t: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` bit trick itself (``t`` is overwritten; returns int32): equal to ``np.rint`` for
    |t| <= 4194303, and ggml's exact (meaningless but deterministic) integers beyond, for inf and for NaN."""
    t += F32(12582912)
    iv = t.view(np.int32)
    iv &= 0x007FFFFF
    iv -= 0x00400000
    return iv


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int,
                   qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type, qw)`` for every row of ``x`` (one group per row).

    ``x`` float32 ``(n_groups, n)``, ``qw`` float32 ``(n_groups, n)`` or ``None``.  Returns ``(scale, L)``:
    float32 ``(n_groups,)`` and int8 ``(n_groups, n)`` holding ``L = l + nmax`` exactly as ggml writes it.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    scale, iscale, zero = make_qx_scales(x, nmax, rmse_type, qw)
    return scale, qx_levels(x, iscale, nmax, zero)


def make_qx_scales(x: np.ndarray, nmax: int, rmse_type: int,
                   qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search part of :func:`make_qx_quants`: ``(scale, iscale, zero)`` where ``iscale`` is the trial
    scale whose levels ggml keeps and ``zero`` marks all-zero groups (``L = 0``); see :func:`qx_levels`.

    How: for a cache-sized chunk of groups, each of the 19 trial scales is evaluated over the whole chunk,
    keeping only its two sums; ggml's sequential choice among the trials then runs over many groups at once.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    nb, n = x.shape
    if qw is not None:
        qw = np.ascontiguousarray(qw, dtype=F32).reshape(nb, n)
    scale, iscale, zero = np.empty(nb, F32), np.empty(nb, F32), np.empty(nb, bool)
    step = max(1, _SUPER_ELEMS // n)
    for g0 in range(0, nb, step):
        g1 = min(nb, g0 + step)
        scale[g0:g1], iscale[g0:g1], zero[g0:g1] = _qx_super(
            x[g0:g1], nmax, rmse_type, None if qw is None else qw[g0:g1])
    return scale, iscale, zero


def qx_levels(x: np.ndarray, iscale: np.ndarray, nmax: int, zero: np.ndarray) -> np.ndarray:
    """``L = nmax + MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x)))`` per group (0 for ``zero`` groups)."""
    t = x * iscale[:, None]
    np.rint(t, out=t)
    np.clip(t, F32(-nmax), F32(nmax - 1), out=t)
    t += F32(nmax)
    L = t.astype(np.int8)
    L[zero] = 0
    return L


def _trial_iscales(mx: np.ndarray, nmax: int, rmse_type: int) -> np.ndarray:
    """Row 0: ``-nmax/max``; rows 1..18: ``-(nmax + 0.1f*is)/max`` for is = -9..-1, 1..9 (ggml's order)."""
    return _trial_numerators(nmax, rmse_type > 0)[:, None] / mx


@functools.lru_cache(maxsize=64)
def _trial_numerators(nmax: int, search: bool) -> np.ndarray:
    steps = [i for i in range(-9, 10) if i] if search else []
    num = np.array([F32(-nmax)] + [-(F32(nmax) + F32(0.1) * F32(i_s)) for i_s in steps], F32)
    num.flags.writeable = False
    return num


def _qx_super(xs, nmax, rmse_type, qws):
    """One block of groups: trial sums chunk by chunk, then the choice, then L."""
    G, n = xs.shape
    K = 1 if rmse_type <= 0 else 19
    isc = np.empty((K, G), F32)
    zero = np.empty(G, bool)
    sums = np.empty((2, K, G), F32)  # sumlx, suml2 of every trial
    m = max(2, _CHUNK_ELEMS // n)
    for c0 in range(0, G, m):
        c1 = min(G, c0 + m)
        # contiguous (n, m) copies: each ufunc of the trial loop then runs as one flat loop
        xc = np.ascontiguousarray(xs[c0:c1].T)
        amax, mx = signed_absmax(xc)
        zero[c0:c1] = amax < GROUP_MAX_EPS
        mx[zero[c0:c1]] = 1  # placeholder divisor; these groups are zeroed at the end
        isc[:, c0:c1] = _trial_iscales(mx, nmax, rmse_type)
        if rmse_type != 0:
            wc = _weights(xc, abs(rmse_type), None if qws is None else np.ascontiguousarray(qws[c0:c1].T))
            _trial_sums(xc, wc, isc[:, c0:c1], nmax, sums[:, :, c0:c1])
    if rmse_type == 0:
        return _finished(F32(1) / isc[0], isc[0], zero)
    sumlx, suml2 = sums
    with np.errstate(divide="ignore", invalid="ignore"):
        scale_all = sumlx / suml2
    scale_all[0][suml2[0] == 0] = 0
    if rmse_type < 0:  # return_early
        inv = F32(1) / isc[0]
        early = np.where(suml2[0] > 0, F32(0.5) * (scale_all[0] + inv), inv)
        return _finished(early, isc[0], zero)
    idx = _choose(sumlx, suml2, scale_all)
    cols = np.arange(G)
    return _finished(scale_all[idx, cols], isc[idx, cols], zero)


def _finished(scale, iscale, zero):
    scale = np.array(scale, F32)
    scale[zero] = 0
    return scale, iscale, zero


def _trial_sums(xc, wc, isc, nmax, sums):
    """Sequential ``sumlx += w*x[i]*l; suml2 += w*l*l`` (ggml's order: row by row) for every trial scale of
    one contiguous chunk ``xc`` (n, m); results go to ``sums`` (2, K, m).

    This loop is the encoder's hot spot (one trial at a time, so that every ufunc runs over the whole chunk
    in one flat loop).  It avoids numpy's per-call overheads (keyword ``out=``, broadcasting, Python-float
    bounds for clip: 1-3 us each) and sums both products in one reduce call."""
    n, m = xc.shape
    wxc = wc * xc
    lo, hi, zero = np.array(-nmax, F32), np.array(nmax - 1, F32), F32(0)
    tc = np.empty((n, m), F32)
    pc = np.empty((2, n, m), F32)
    p_lx, p_l2 = pc
    mul, rint = np.multiply, np.rint
    reduce = _reduce_seq if m == 1 else np.add.reduce  # one column: numpy would sum it pairwise
    for k, iv in enumerate(isc):
        tc[...] = iv
        mul(tc, xc, tc)
        rint(tc, tc)
        _clip(tc, lo, hi, tc)
        mul(wxc, tc, p_lx)
        mul(wc, tc, p_l2)
        mul(p_l2, tc, p_l2)
        reduce(pc, 1, None, sums[:, k], False, zero)  # both sums in one call


def _reduce_seq(a, axis, dtype, out, keepdims, initial):
    """``np.add.reduce``'s positional signature over axis 1 of (2, n, 1), summed sequentially."""
    seq_sum0(a[0], out=out[0])
    seq_sum0(a[1], out=out[1])
    return out


def _choose(sumlx, suml2, scale_all):
    """ggml's scan over the trials: take trial k if ``suml2 > 0 && sumlx*sumlx > best*suml2``; returns the
    index of the last trial taken (0: the first guess).

    (``suml2 > 0`` is implied: the weights are >= 0, so suml2 == 0 means every term is 0, sumlx is then +-0
    and ``0 > best*0`` is false.)"""
    K, G = sumlx.shape
    with np.errstate(invalid="ignore"):
        cand = scale_all * sumlx
    sq = sumlx * sumlx
    best = cand[0].copy()
    tmp = np.empty_like(best)
    takes = np.zeros((K, G), bool)
    for k in range(1, K):
        np.multiply(best, suml2[k], tmp)
        np.greater(sq[k], tmp, takes[k])
        np.copyto(best, cand[k], "same_kind", takes[k])
    takes = takes.view(np.uint8)
    takes *= np.arange(K, dtype=np.uint8)[:, None]
    return takes.max(axis=0)


def make_qkx3_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None = None, rmin: float = -0.9,
                     rdelta: float = 0.05, nstep: int = 36,
                     use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)``.

    ``x``/``weights`` float32 ``(n_groups, n)``.  Returns ``(scale, the_min, L)``: float32 ``(n_groups,)`` twice
    and uint8 ``(n_groups, n)`` in ``[0, nmax]``.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    nb, n = x.shape
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=F32).reshape(nb, n)
    scale, the_min = np.empty(nb, F32), np.empty(nb, F32)
    L = np.empty((nb, n), np.uint8)
    step = max(1, _QKX3_CHUNK_ELEMS // n)
    for c0 in range(0, nb, step):
        c1 = min(nb, c0 + step)
        xt = np.ascontiguousarray(x[c0:c1].T)
        wt = xt * xt if weights is None else np.ascontiguousarray(weights[c0:c1].T)
        with np.errstate(divide="ignore", invalid="ignore"):
            s, mn, lt = _qkx3_chunk(xt, wt, nmax, F32(rmin), F32(rdelta), nstep, use_mad)
        scale[c0:c1], the_min[c0:c1], L[c0:c1] = s, mn, lt.T
    return scale, the_min, L


def _qkx3_chunk(xt, w, nmax, rmin, rdelta, nstep, use_mad):
    # Mirrors ggml step by step; note that ``min`` is updated inside the search and feeds later steps.
    # Hot loop: positional ufunc outputs, 0-d clip bounds, the three sums in one reduce (see _trial_sums).
    n, m = xt.shape
    mn = first_min(xt)
    mx = xt.max(axis=0)
    sum_w = seq_sum0(w)  # ggml starts these from element 0, not +0: the same sums
    sum_x = seq_sum0(w * xt)
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx <= mn
    lo, hi = np.array(0, F32), np.array(nmax, F32)
    rng = np.where(flat, F32(1), mx - mn)
    iscale = F32(nmax) / rng
    scale = F32(1) / iscale
    xmin = xt.min(axis=0)
    span = _span(mx, xmin, mn)
    risky = _risky(span, mx, mn, nmax, flat)
    xm = xt - mn
    t, tmp = np.empty_like(xt), np.empty_like(xt)
    p = np.empty((3, n, m), F32)
    sums = np.empty((3, m), F32)
    _levels_guarded(xm, iscale, span, lo, hi, t, True)
    best_mad = _mad(scale, mn, t, xt, w, use_mad, tmp)
    # the levels ggml keeps are those of (lev_isc, lev_mn): recomputed once at the end, not copied per trial
    lev_isc, lev_mn = iscale, mn
    mul = np.multiply
    for i_s in range(nstep + 1):
        isc = (rmin + rdelta * F32(i_s) + F32(nmax)) / (mx - mn)
        _levels_guarded(xm, isc, span, lo, hi, t, risky)
        mul(w, t, p[0])
        mul(p[0], xt, p[1])
        mul(p[0], t, p[2])
        _reduce_rows(p, sums)
        sum_l, sum_xl, sum_l2 = sums
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = (D > 0) & ~flat
        if not ok.any():
            continue
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min[pos] = 0
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        mad = _mad(this_scale, this_min, t, xt, w, use_mad, tmp)
        upd = ok & (mad < best_mad)
        if upd.any():
            lev_isc, lev_mn = np.where(upd, isc, lev_isc), np.where(upd, mn, lev_mn)
            best_mad = np.where(upd, mad, best_mad)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
            span = _span(mx, xmin, mn)
            risky = _risky(span, mx, mn, nmax, flat)
            np.subtract(xt, mn, xm)
    best_l = _levels_guarded(xt - lev_mn, lev_isc, _span(mx, xmin, lev_mn), lo, hi, t, True)
    scale = np.where(flat, F32(0), scale)
    best_l[:, flat] = 0
    return scale, -mn, best_l.astype(np.uint8)


def _reduce_rows(p, out):
    """Sequential sums over axis 1 of (k, n, m) into (k, m)."""
    if p.shape[2] > 1:
        return np.add.reduce(p, 1, None, out, False, F32(0))
    for a, o in zip(p, out, strict=True):
        seq_sum0(a, out=o)
    return out


def _span(mx, xmin, mn):
    """Largest |x - min| of each group: bounds |iscale*(x - min)|."""
    return np.maximum(np.abs(mx - mn), np.abs(xmin - mn))


def _risky(span, mx, mn, nmax, flat):
    """Whether a group's |iscale*(x - min)| could leave rint's range in some trial (|iscale| <= (nmax+1)/range)."""
    return ~((span <= (mx - mn) * F32(4e6 / (nmax + 1))) & (span < np.inf)) & ~flat


def _levels_guarded(xm, isc, span, lo, hi, out, risky):
    """``clip(rint(isc*xm))``, except where a tiny range made ``iscale`` huge or inf: those groups get ggml's
    nearest_int (checked only if some group is ``risky``)."""
    out[...] = isc
    np.multiply(out, xm, out)
    np.rint(out, out)
    _clip(out, lo, hi, out)
    wild = None if not np.any(risky) else ~(np.abs(isc) * span <= F32(4e6))
    if wild is not None and wild.any():
        out[:, wild] = np.clip(nearest_int(xm[:, wild] * isc[wild]), lo, hi)
    return out


def _mad(scale, mn, lf, xt, w, use_mad, tmp):
    """Sequential ``mad += w * diff^2`` (or ``|diff|``) with ``diff = scale*L + min - x``."""
    tmp[...] = scale
    np.multiply(tmp, lf, tmp)
    np.add(tmp, mn, tmp)
    np.subtract(tmp, xt, tmp)
    if use_mad:
        np.abs(tmp, tmp)
    else:
        np.multiply(tmp, tmp, tmp)
    np.multiply(tmp, w, tmp)
    return seq_sum0(tmp)
