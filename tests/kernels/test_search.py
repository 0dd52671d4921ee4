"""The vectorised scale searches against line-by-line transcriptions of ggml's C (transcriptions.py), one group
at a time; the encoders that use them are checked against ggml itself in test_bitexact.py / test_kquants.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.qkx_search import make_qkx2_quants, make_qkx3_quants
from kernels.qx_search import make_qx_quants
from kernels.refine_search import make_q3_quants, make_qp_quants

from . import transcriptions as ref

F = np.float32


def _groups(n: int, count: int, seed: int) -> np.ndarray:
    """Groups at magnitudes 1e-4..1e4 plus the edge cases: all zero, constant, few levels (ties), +a/-a pairs
    (the first of largest magnitude must win), near GROUP_MAX_EPS, mixed zero signs."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((count, n)) * 10.0 ** rng.integers(-4, 4, (count, 1))
    g[0] = 0
    g[1] = 0.5
    g[2] = rng.integers(-3, 4, n) * 0.25
    g[3, ::2] = -g[3, 1::2]
    g[4] *= 1e-15
    g[5] = np.where(np.arange(n) % 3, 1.5, 0.0)
    g[5, 1] = -0.0
    g[6] = np.abs(g[6])
    g[7] = -np.abs(g[7])
    return np.ascontiguousarray(g, dtype=F)


def _same_scale(a, b) -> bool:
    return F(a).tobytes() == F(b).tobytes()


@pytest.mark.parametrize("rmse_type", [0, 1, 2, 3, 4, -1, -2])
@pytest.mark.parametrize("n,nmax", [(16, 32), (32, 8), (16, 4)])
def test_make_qx_quants(n, nmax, rmse_type) -> None:
    x = _groups(n, 24, seed=n + nmax)
    qw = None
    if rmse_type == 1 and nmax == 8:
        qw = np.random.default_rng(3).uniform(0, 2, x.shape).astype(F)
    scale, L = make_qx_quants(x, nmax, rmse_type, qw)
    assert scale.dtype == F and L.dtype == np.int8 and L.shape == x.shape
    for g in range(len(x)):
        s_ref, L_ref = ref.make_qx_quants(x[g], nmax, rmse_type, None if qw is None else qw[g])
        assert _same_scale(scale[g], s_ref), (g, scale[g], s_ref)
        assert L[g].tolist() == L_ref, g


def test_make_qx_quants_chunk_edges() -> None:
    x = _groups(16, 5000, seed=5)  # several chunks, the last one a single group
    s_all, L_all = make_qx_quants(x, 32, 1)
    s_one, L_one = make_qx_quants(x[-1:], 32, 1)
    assert _same_scale(s_all[-1], s_one[0]) and np.array_equal(L_all[-1], L_one[0])
    s_ref, L_ref = ref.make_qx_quants(x[-1], 32, 1)
    assert _same_scale(s_one[0], s_ref) and L_one[0].tolist() == L_ref


@pytest.mark.parametrize("do_rmse", [True, False])
def test_make_q3_quants(do_rmse) -> None:
    x = _groups(16, 40, seed=33)
    x[8:12] *= F(1e13)                               # x^3 overflows: NaN sums
    scale, L = make_q3_quants(x, 4, do_rmse)
    for g in range(len(x)):
        s_ref, L_ref = ref.make_q3_quants(x[g], 4, do_rmse)
        assert _same_scale(scale[g], s_ref), (g, scale[g], s_ref)
        assert L[g].tolist() == L_ref, g


@pytest.mark.parametrize("args", [(15, -1.0, 0.1, 20, False), (31, -0.5, 0.1, 15, False),
                                  (3, -0.5, 0.1, 15, True), (15, -0.9, 0.05, 36, False)])
def test_make_qkx2_quants(args) -> None:
    # Q2_K's use_mad=True with 16-value blocks; one block alone exercises the single-column sums
    rng = np.random.default_rng(5)
    n = 16 if args[0] == 3 else 32
    x = (rng.standard_t(3, (12, n)) * rng.uniform(0.01, 2, (12, 1))).astype(F)
    x[3] = 0.0
    x[4] = np.abs(x[4])
    x[5, :4] = [0.0, -0.0, 1.0, 2.0]                 # min 0 from a +0 before a -0
    x[5, 4:] = np.abs(x[5, 4:])
    w = (np.abs(x) + rng.uniform(0, 1, (12, 1))).astype(F)
    for xs, ws in ((x, w), (x[:1], w[:1])):
        scale, the_min, lv = make_qkx2_quants(xs, args[0], ws, *args[1:])
        for b in range(xs.shape[0]):
            s_ref, m_ref, l_ref = ref.make_qkx_quants(xs[b], ws[b], *args)
            assert _same_scale(scale[b], s_ref) and _same_scale(the_min[b], m_ref), b
            assert lv[b].tolist() == l_ref, b


@pytest.mark.parametrize("weighted", [False, True])
def test_make_qkx3_quants(weighted) -> None:
    x = _groups(32, 12, seed=9)
    x[8] = [-0.0, 0.0] * 16                          # flat: the_min keeps the first zero's sign
    x[9] = [0.0, -0.0] * 16
    w = np.random.default_rng(4).uniform(0, 3, x.shape).astype(F) if weighted else None
    scale, the_min, L = make_qkx3_quants(x, 15, w)
    assert scale.dtype == the_min.dtype == F and L.dtype == np.uint8 and L.shape == x.shape
    for g in range(len(x)):
        s, m, Lr = ref.make_qkx_quants(x[g], None if w is None else w[g], 15, -0.9, 0.05, 36, False)
        assert _same_scale(scale[g], s) and _same_scale(the_min[g], m), g
        assert L[g].tolist() == Lr, g


def test_make_qkx_quants_tiny_and_huge_ranges() -> None:
    # ranges near the bottom of float32 make iscale overflow, near the top max - min overflows: ggml's
    # nearest_int bit trick must be reproduced there
    x = np.array([[0.0] * 31 + [1e-38], np.linspace(-1e-38, 1e-38, 32), [3e38, -3e38] * 16,
                  np.linspace(-1e-40, 0, 32)], F)
    w = np.ones_like(x)
    with np.errstate(all="ignore"):
        scale, the_min, lv = make_qkx2_quants(x, 15, w, -1.0, 0.1, 20, False)
    for b in range(len(x)):
        s_ref, m_ref, l_ref = ref.make_qkx_quants(x[b], w[b], 15, -1.0, 0.1, 20, False)
        assert _same_scale(scale[b], s_ref) and _same_scale(the_min[b], m_ref), b
        assert lv[b].tolist() == l_ref, b


@pytest.mark.parametrize("nmax,n", [(63, 8), (15, 16)])
def test_make_qp_quants(nmax, n) -> None:
    """Also the paths no ggml encoder reaches with real data: negative inputs (levels wrap as uint8_t), NaN and
    inf scales (ggml's MAX fold lets a NaN through until the next element)."""
    rng = np.random.default_rng(11)
    x = (rng.gamma(2.0, 1.0, (80, n)) * rng.uniform(1e-3, 10, (80, 1))).astype(F)
    x[20:40] -= F(0.3 * x[20:40].max())              # negative values
    x[40:45] = 0.0
    x[45:50] *= F(1e-16)
    x[55, 2] = np.nan
    x[56, -1] = np.nan
    x[57, 0] = np.inf
    qw = rng.random((80, n)).astype(F)
    qw[50:55, : n // 2] = 0.0
    scale, L = make_qp_quants(x, nmax, qw)
    assert L.dtype == np.uint8
    for g in range(len(x)):
        s_ref, l_ref = ref.make_qp_quants(x[g], nmax, qw[g])
        assert _same_scale(scale[g], s_ref), (g, scale[g], s_ref)
        assert L[g].tolist() == l_ref, g


def test_make_qx_quants_overflowed_input() -> None:
    """Q3_K's imatrix encoder feeds its group scales to make_qx_quants again; with |x| beyond ~1e19 (or huge
    importance) some scales overflow to NaN or inf next to finite ones.  ggml's nearest_int maps NaN to 0
    (level nmax) and a NaN never wins the largest-magnitude scan."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((12, 16)).astype(F)
    x[0, 3] = x[1, ::2] = x[2, 5] = np.nan
    x[3, 7], x[4, 0], x[5, :] = np.inf, -np.inf, np.nan
    x[6, :8], x[7, 3] = np.nan, F(3e38)
    qw = rng.uniform(0, 2, x.shape).astype(F)
    qw[8:] = F(1e36)                                 # w*x*l overflows: inf - inf in the sums
    with np.errstate(all="ignore"):
        scale, L = make_qx_quants(x, 32, 1, qw)
    for g in range(len(x)):
        s_ref, L_ref = ref.make_qx_quants(x[g], 32, 1, qw[g])
        assert _same_scale(scale[g], s_ref), (g, scale[g], s_ref)
        assert L[g].tolist() == L_ref, g
