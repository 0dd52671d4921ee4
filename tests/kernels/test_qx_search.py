"""The vectorised scale searches against a line-by-line scalar transcription of ggml's C (np.float32 scalars,
one group at a time).  ggml does not export these functions, so the transcription is the oracle here; the
encoders that use them are checked against ggml itself in test_bitexact.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.qx_search import first_min, make_qkx3_quants, make_qx_quants, nearest_int, seq_sum0, signed_absmax

F = np.float32


def _nearest(v) -> int:
    return int(np.rint(F(v)))


def ref_make_qx_quants(x, nmax, rmse_type, qw):
    """ggml-quants.c make_qx_quants, transcribed."""
    n = len(x)
    mx, amax = F(0), F(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = F(abs(v)), F(v)
    if amax < F(1e-15):
        return F(0), [0] * n
    iscale = F(-nmax) / mx
    if rmse_type == 0:
        return F(1) / iscale, [nmax + max(-nmax, min(nmax - 1, _nearest(iscale * v))) for v in x]
    early = rmse_type < 0
    rmse_type = abs(rmse_type)

    def w_of(i):
        if qw is not None:
            return F(qw[i])
        return {1: x[i] * x[i], 2: F(1), 3: F(abs(x[i]))}.get(rmse_type, F(np.sqrt(F(abs(x[i])))))

    def sums(isc):
        slx, sl2, L = F(0), F(0), []
        for i in range(n):
            lv = max(-nmax, min(nmax - 1, _nearest(isc * x[i])))
            L.append(lv + nmax)
            w = w_of(i)
            slx = F(slx + F(F(w * x[i]) * F(lv)))
            sl2 = F(sl2 + F(F(w * F(lv)) * F(lv)))
        return slx, sl2, L

    sumlx, suml2, L = sums(iscale)
    scale = sumlx / suml2 if suml2 else F(0)
    if early:
        return (F(F(0.5) * F(scale + F(1) / iscale)) if suml2 > 0 else F(1) / iscale), L
    best = F(scale * sumlx)
    for i_s in range(-9, 10):
        if i_s == 0:
            continue
        isc = F(-F(F(nmax) + F(F(0.1) * F(i_s))) / mx)
        slx, sl2, Lt = sums(isc)
        if sl2 > 0 and F(slx * slx) > F(best * sl2):
            L, scale = Lt, F(slx / sl2)
            best = F(scale * slx)
    return scale, L


def _groups(n, count, seed):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((count, n)) * 10.0 ** rng.integers(-4, 4, (count, 1))
    g[0] = 0
    g[1] = 0.5
    g[2] = rng.integers(-3, 4, n) * 0.25
    g[3, ::2] = -g[3, 1::2]  # +a and -a: the first one of largest magnitude must win
    g[4] *= 1e-15
    return np.ascontiguousarray(g, dtype=F)


@pytest.mark.parametrize("rmse_type", [0, 1, 2, 3, 4, -1, -2])
@pytest.mark.parametrize("n,nmax", [(16, 32), (32, 8), (16, 4)])
def test_make_qx_quants_matches_transcription(n, nmax, rmse_type) -> None:
    x = _groups(n, 24, seed=n + nmax)
    qw = None
    if rmse_type == 1 and nmax == 8:
        qw = np.random.default_rng(3).uniform(0, 2, x.shape).astype(F)
    scale, L = make_qx_quants(x, nmax, rmse_type, qw)
    assert scale.dtype == F and L.dtype == np.int8 and L.shape == x.shape
    for g in range(len(x)):
        s_ref, L_ref = ref_make_qx_quants(list(x[g]), nmax, rmse_type, None if qw is None else qw[g])
        assert scale[g].tobytes() == F(s_ref).tobytes(), (g, scale[g], s_ref)
        assert L[g].tolist() == L_ref, g


def test_make_qx_quants_single_group_and_chunk_edges() -> None:
    x = _groups(16, 5000, seed=5)  # several chunks, the last one a single group
    s_all, L_all = make_qx_quants(x, 32, 1)
    s_one, L_one = make_qx_quants(x[-1:], 32, 1)
    assert s_all[-1].tobytes() == s_one[0].tobytes() and np.array_equal(L_all[-1], L_one[0])
    s_ref, L_ref = ref_make_qx_quants(list(x[-1]), 32, 1, None)
    assert s_one[0].tobytes() == F(s_ref).tobytes() and L_one[0].tolist() == L_ref


@pytest.mark.parametrize("m", [1, 2, 3, 17])
def test_seq_sum0_is_sequential(m) -> None:
    rng = np.random.default_rng(m)
    a = (rng.standard_normal((32, m)) * 10.0 ** rng.uniform(-6, 6, (32, m))).astype(F)
    acc = np.zeros(m, F)
    for row in a:
        acc += row
    assert np.array_equal(seq_sum0(a), acc)
    assert np.array_equal(seq_sum0(np.full((4, m), -0.0, F)).view(np.uint32), np.zeros(m, np.uint32))  # +0.0


def test_signed_absmax_first_of_largest_magnitude() -> None:
    xt = np.array([[1, -3, 0, -0.0, 2, np.nan], [-2, 3, -0.0, 0, -2, 1], [2, 0, 0, 0, 1, -4]], F)
    amax, mx = signed_absmax(xt)
    assert amax.tolist() == [2, 3, 0, 0, 2, 4]
    assert mx.tolist() == [-2, -3, 0, 0, 2, -4]
    assert not np.signbit(mx[2]) and not np.signbit(mx[3])  # all zero: ggml's initial +0.0


def test_first_min_keeps_first_zero_sign() -> None:
    xt = np.array([[1, 0.0, -0.0], [-0.0, -0.0, 0.0], [0.0, 1, 2]], F)
    mn = first_min(xt)
    assert np.signbit(mn).tolist() == [True, False, True]


def test_nearest_int_is_ggmls() -> None:
    v = np.array([0.5, 1.5, -0.5, -2.5, 2.4999998, 4194303.0, -7.5], F)
    assert nearest_int(v.copy()).tolist() == np.rint(v).astype(int).tolist()
    # beyond ggml's assert range: the bit trick's own results, not rint's
    odd = np.array([np.inf, -np.inf, np.nan, 1e10], F)
    expect = [(int(np.array([F(o) + F(12582912)], F).view(np.int32)[0]) & 0x7FFFFF) - 0x400000 for o in odd]
    assert nearest_int(odd.copy()).tolist() == expect


def ref_make_qkx3_quants(x, nmax, weights, rmin=-0.9, rdelta=0.05, nstep=36):
    """ggml-quants.c make_qkx3_quants (use_mad = false), transcribed."""
    n = len(x)
    w = [F(weights[i]) if weights is not None else F(x[i] * x[i]) for i in range(n)]
    mn, mx, sum_w, sum_x = F(x[0]), F(x[0]), w[0], F(w[0] * x[0])
    for i in range(1, n):
        mn = x[i] if x[i] < mn else mn
        mx = x[i] if x[i] > mx else mx
        sum_w = F(sum_w + w[i])
        sum_x = F(sum_x + F(w[i] * x[i]))
    if mn > 0:
        mn = F(0)
    if mx <= mn:
        return F(0), F(-mn), [0] * n
    iscale = F(F(nmax) / F(mx - mn))
    scale = F(F(1) / iscale)
    L = [max(0, min(nmax, _nearest(iscale * F(x[i] - mn)))) for i in range(n)]
    best = F(0)
    for i in range(n):
        d = F(F(F(scale * F(L[i])) + mn) - x[i])
        best = F(best + F(w[i] * F(d * d)))
    for i_s in range(nstep + 1):
        isc = F(F(F(F(rmin) + F(F(rdelta) * F(i_s))) + F(nmax)) / F(mx - mn))
        La = [max(0, min(nmax, _nearest(isc * F(x[i] - mn)))) for i in range(n)]
        sl, sl2, sxl = F(0), F(0), F(0)
        for i in range(n):
            wl = F(w[i] * F(La[i]))
            sl, sl2, sxl = F(sl + wl), F(sl2 + F(wl * F(La[i]))), F(sxl + F(wl * x[i]))
        D = F(F(sum_w * sl2) - F(sl * sl))
        if D > 0:
            ts = F(F(F(sum_w * sxl) - F(sum_x * sl)) / D)
            tm = F(F(F(sl2 * sum_x) - F(sl * sxl)) / D)
            if tm > 0:
                tm, ts = F(0), F(sxl / sl2)
            mad = F(0)
            for i in range(n):
                d = F(F(F(ts * F(La[i])) + tm) - x[i])
                mad = F(mad + F(w[i] * F(d * d)))
            if mad < best:
                L, best, scale, mn = La, mad, ts, tm
    return scale, F(-mn), L


@pytest.mark.parametrize("weighted", [False, True])
def test_make_qkx3_quants_matches_transcription(weighted) -> None:
    x = _groups(32, 8, seed=9)
    w = np.random.default_rng(4).uniform(0, 3, x.shape).astype(F) if weighted else None
    scale, the_min, L = make_qkx3_quants(x, 15, w)
    for g in range(len(x)):
        s, m, Lr = ref_make_qkx3_quants(list(x[g]), 15, None if w is None else w[g])
        assert (scale[g].tobytes(), the_min[g].tobytes()) == (F(s).tobytes(), F(m).tobytes()), g
        assert L[g].tolist() == Lr, g
