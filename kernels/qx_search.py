"""ggml's symmetric per-group scale search ``make_qx_quants``, vectorised across groups, bit for bit.

Used by Q6_K (both encoders), Q3_K's imatrix encoder (group scales, then the scales of the scales) and the
weighted Q4_0/Q5_0 encoders.  It works on a *transposed* chunk ``xt`` of shape ``(n, m)``: row ``i`` holds
element ``i`` of ``m`` groups, so ggml's sequential per-group sums ``s += t[i]`` are numpy reductions over axis
0 (see :func:`~kernels._prims.seq_sum`) and every other step is one whole-array float32 ufunc.  Chunks keep
the working set in L2.

Levels use ``np.rint``, equal to ggml's ``nearest_int`` because ``|iscale*x| <= nmax + 1`` always holds, except
for NaN input (group scales that overflowed, fed to Q3_K's second search): ggml's ``nearest_int(NaN)`` is 0,
so chunks holding non-finite values take a slower exact path.
"""
from __future__ import annotations

import functools

import numpy as np

from ._prims import F32, GROUP_MAX_EPS, clip, seq_sum, signed_absmax

_CHUNK_ELEMS = 1 << 15  # elements of x per chunk: x, w*x, w and the temporaries stay in a 1 MB L2
_SUPER_ELEMS = 1 << 18  # elements of x per block of groups whose trials are chosen together


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
    clip(t, np.array(-nmax, F32), np.array(nmax - 1, F32), t)
    _nan_to_zero(t)
    t += F32(nmax)
    L = t.astype(np.int8)
    L[zero] = 0
    return L


def _nan_to_zero(t: np.ndarray) -> None:
    """ggml's ``nearest_int(NaN)`` is 0 (and 0 is inside every clamp): where rint left NaN, put 0."""
    nan = np.isnan(t)
    if nan.any():
        t[nan] = 0


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
    finite = bool(np.isfinite(xc).all())  # NaN/inf input (overflowed group scales): levels of NaN are 0
    for k, iv in enumerate(isc):
        tc[...] = iv
        mul(tc, xc, tc)
        rint(tc, tc)
        clip(tc, lo, hi, tc)
        if not finite:
            _nan_to_zero(tc)
        mul(wxc, tc, p_lx)
        mul(wc, tc, p_l2)
        mul(p_l2, tc, p_l2)
        reduce(pc, 1, None, sums[:, k], False, zero)  # both sums in one call


def _reduce_seq(a, axis, dtype, out, keepdims, initial):
    """``np.add.reduce``'s positional signature over axis 1 of (2, n, 1), summed sequentially."""
    return seq_sum(a, axis, out)


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
