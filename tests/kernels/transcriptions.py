"""ggml's scale searches transcribed line by line from ggml-quants.c with np.float32 scalars, one group at a time.

ggml does not export these functions, so the transcriptions are the oracle for the vectorised searches (the
encoders that use them are checked against ggml itself).  Each keeps the C evaluation order (``w*x[i]*l`` is
``(w*x[i])*l``) and ggml's ``nearest_int`` bit trick (NaN -> 0, +-inf -> -2^22).
"""
from __future__ import annotations

import numpy as np

F = np.float32


def nearest_int(v) -> int:
    with np.errstate(all="ignore"):
        return int((np.array([v], F) + F(12582912.0)).view(np.int32)[0] & 0x7FFFFF) - 0x400000


def _signed_absmax(x) -> tuple[np.float32, np.float32]:
    """``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from 0."""
    mx = amax = F(0)
    for v in x:
        if F(abs(v)) > amax:
            amax, mx = F(abs(v)), F(v)
    return amax, mx


def make_qx_quants(x, nmax: int, rmse_type: int, qw=None) -> tuple[np.float32, list[int]]:
    with np.errstate(all="ignore"):
        return _make_qx_quants(list(map(F, x)), nmax, rmse_type, qw)


def _make_qx_quants(x, nmax, rmse_type, qw):
    n = len(x)
    amax, mx = _signed_absmax(x)
    if amax < F(1e-15):
        return F(0), [0] * n
    iscale = F(-nmax) / mx
    if rmse_type == 0:
        return F(1) / iscale, [nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * v))) for v in x]
    early = rmse_type < 0
    rmse_type = abs(rmse_type)

    def w_of(i):
        if qw is not None:
            return F(qw[i])
        return {1: x[i] * x[i], 2: F(1), 3: F(abs(x[i]))}.get(rmse_type, F(np.sqrt(F(abs(x[i])))))

    def sums(isc):
        slx, sl2, L = F(0), F(0), []
        for i in range(n):
            lv = max(-nmax, min(nmax - 1, nearest_int(isc * x[i])))
            L.append(lv + nmax)
            w = w_of(i)
            slx = slx + (w * x[i]) * F(lv)
            sl2 = sl2 + (w * F(lv)) * F(lv)
        return slx, sl2, L

    sumlx, suml2, L = sums(iscale)
    scale = sumlx / suml2 if suml2 else F(0)
    if early:
        return (F(0.5) * (scale + F(1) / iscale) if suml2 > 0 else F(1) / iscale), L
    best = scale * sumlx
    for i_s in range(-9, 10):
        if i_s == 0:
            continue
        isc = -(F(nmax) + F(0.1) * F(i_s)) / mx
        slx, sl2, Lt = sums(isc)
        if sl2 > 0 and slx * slx > best * sl2:
            L, scale = Lt, slx / sl2
            best = scale * slx
    return scale, L


def make_q3_quants(x, nmax: int, do_rmse: bool = True) -> tuple[np.float32, list[int]]:
    with np.errstate(all="ignore"):
        return _make_q3_quants(list(map(F, x)), nmax, do_rmse)


def _make_q3_quants(x, nmax, do_rmse):
    n = len(x)
    amax, mx = _signed_absmax(x)
    if amax < F(1e-15):
        return F(0), [0] * n
    iscale = F(-nmax) / mx
    L = [max(-nmax, min(nmax - 1, nearest_int(iscale * v))) for v in x]
    if not do_rmse:
        return F(1) / iscale, [lv + nmax for lv in L]
    sumlx = suml2 = F(0)
    for i in range(n):
        w = x[i] * x[i]
        sumlx = sumlx + (w * x[i]) * F(L[i])
        suml2 = suml2 + (w * F(L[i])) * F(L[i])
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - (w * x[i]) * F(L[i])
            if slx > 0:
                sl2 = suml2 - (w * F(L[i])) * F(L[i])
                new_l = max(-nmax, min(nmax - 1, nearest_int((x[i] * sl2) / slx)))
                if new_l != L[i]:
                    slx = slx + (w * x[i]) * F(new_l)
                    sl2 = sl2 + (w * F(new_l)) * F(new_l)
                    if sl2 > 0 and (slx * slx) * suml2 > (sumlx * sumlx) * sl2:
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        changed += 1
        if not changed:
            break
    return (sumlx / suml2 if suml2 > F(0) else F(0)), [lv + nmax for lv in L]


def make_qkx_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool) -> tuple[np.float32, np.float32, list[int]]:
    """make_qkx2_quants (``w`` given) / make_qkx3_quants (``w=None``: x*x); returns scale, the_min, L."""
    with np.errstate(all="ignore"):
        x = list(map(F, x))
        w = [xi * xi for xi in x] if w is None else list(map(F, w))
        return _make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad)


def _make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad):
    n = len(x)
    mn, mx, sw = x[0], x[0], w[0]
    sx = sw * x[0]
    for i in range(1, n):
        mn, mx = (x[i] if x[i] < mn else mn), (x[i] if x[i] > mx else mx)
        sw = sw + w[i]
        sx = sx + w[i] * x[i]
    mn = F(0) if mn > 0 else mn
    if mx == mn:
        return F(0), -mn, [0] * n

    def err(s, m, lv):
        e = F(0)
        for i in range(n):
            dd = s * F(lv[i]) + m - x[i]
            e = e + w[i] * (abs(dd) if use_mad else dd * dd)
        return e

    def levels(isc):
        return [max(0, min(nmax, nearest_int(isc * (xi - mn)))) for xi in x]

    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    best_l = levels(iscale)
    best = err(scale, mn, best_l)
    for step in range(nstep + 1):
        lv = levels((F(rmin) + F(rdelta) * F(step) + F(nmax)) / (mx - mn))
        sl = sl2 = sxl = F(0)
        for i in range(n):
            sl = sl + w[i] * F(lv[i])
            sl2 = sl2 + w[i] * F(lv[i]) * F(lv[i])
            sxl = sxl + w[i] * F(lv[i]) * x[i]
        d = sw * sl2 - sl * sl
        if d > 0:
            ts, tm = (sw * sxl - sx * sl) / d, (sl2 * sx - sl * sxl) / d
            if tm > 0:
                tm, ts = F(0), sxl / sl2
            cur = err(ts, tm, lv)
            if cur < best:
                best_l, best, scale, mn = lv, cur, ts, tm
    return scale, -mn, best_l


def make_qp_quants(x, nmax: int, qw) -> tuple[np.float32, list[int]]:
    """L as ggml's ``uint8_t L[]`` holds it (a negative level wraps modulo 256)."""
    with np.errstate(all="ignore"):
        return _make_qp_quants(list(map(F, x)), nmax, list(map(F, qw)))


def _make_qp_quants(x, nmax, qw):
    n = len(x)
    mx = F(0)
    for v in x:
        mx = mx if mx > v else v                    # MAX(max, x[i])
    if mx < F(1e-15):
        return F(0), [0] * n
    iscale = F(nmax) / mx
    L = [nearest_int(iscale * x[i]) & 0xFF for i in range(n)]
    scale = F(1) / iscale
    best = F(0)
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        best = best + (qw[i] * diff) * diff
    for s in [-4, -3, -2, -1, 1, 2, 3, 4]:
        isc = (F(0.1) * F(s) + F(nmax)) / mx
        sc = F(1) / isc
        mse = F(0)
        for i in range(n):
            diff = x[i] - sc * F(min(nmax, nearest_int(isc * x[i])))
            mse = mse + (qw[i] * diff) * diff
        if mse < best:
            best, iscale = mse, isc
    sumlx = suml2 = F(0)
    for i in range(n):
        lv = min(nmax, nearest_int(iscale * x[i]))
        L[i] = lv & 0xFF
        sumlx = sumlx + (qw[i] * x[i]) * F(lv)
        suml2 = suml2 + (qw[i] * F(lv)) * F(lv)
    for _ in range(5):
        changed = 0
        for i in range(n):
            slx = sumlx - (qw[i] * x[i]) * F(L[i])
            sl2 = suml2 - (qw[i] * F(L[i])) * F(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int((x[i] * sl2) / slx))
                if new_l != L[i]:
                    slx = slx + (qw[i] * x[i]) * F(new_l)
                    sl2 = sl2 + (qw[i] * F(new_l)) * F(new_l)
                    if (slx * slx) * suml2 > (sumlx * sumlx) * sl2:
                        L[i], sumlx, suml2 = new_l & 0xFF, slx, sl2
                        changed += 1
        if not changed:
            break
    return (sumlx / suml2 if suml2 > 0 else F(0)), L
