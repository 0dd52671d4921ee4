"""The element-level primitives (kernels._prims) and byte layouts (kernels._packing) against the C semantics
they stand for, spelled out with explicit loops; NaN, ties and signed zeros included."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import _packing as pk
from kernels import _prims as pr

from . import transcriptions as ref

F = np.float32


def _bits(a) -> list[int]:
    return np.asarray(a, F).view(np.uint32).tolist()


def test_nearest_int_is_ggmls_bit_trick() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49, -7.51, 2.4999998, 4194303.0, 3e7, -1e9, 1e10,
                  np.inf, -np.inf, np.nan], F)
    expect = [ref.nearest_int(e) for e in v]
    assert pr.nearest_int(v).tolist() == expect
    assert expect[:9] == [0, 2, 2, 0, -2, 3, -8, 2, 4194303]      # round half to even inside the range
    assert expect[-3:] == [-4194304, -4194304, 0]                  # inf and NaN as ggml sees them
    t = v.copy()
    assert pr.nearest_int(t, inplace=True).tolist() == expect
    t = v.copy()
    assert pr.clip_nearest(t, -4, 3, offset=4).tolist() == [max(-4, min(3, e)) + 4 for e in expect]


def test_roundf_half_away_from_zero() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 1.4999999, 126.5, -127.49], F)
    t = v.copy()
    got = pr.roundf_inplace(t, np.empty(t.shape, np.uint32)).astype(np.int32)
    assert got.tolist() == [1, 2, 3, -1, -3, 0, 0, 1, 127, -127]


@pytest.mark.parametrize("m", [1, 2, 3, 17])
def test_seq_sum_is_sequential(m) -> None:
    rng = np.random.default_rng(m)
    a = (rng.standard_normal((32, m)) * 10.0 ** rng.uniform(-6, 6, (32, m))).astype(F)
    acc = np.zeros(m, F)
    for row in a:
        acc += row
    assert _bits(pr.seq_sum(a)) == _bits(acc)
    out = np.empty(m, F)
    pr.seq_sum(a, out=out)
    assert _bits(out) == _bits(acc)
    assert _bits(pr.seq_sum(np.full((4, m), -0.0, F))) == [0] * m      # 0.0f + -0.0f = +0.0f
    stacked = np.stack([a, -a, a * 3])                                   # (3, 32, m) over axis 1
    assert _bits(pr.seq_sum(stacked, axis=1)) == _bits(np.stack([acc, -acc, pr.seq_sum(a * 3)]))


def _scan_signed_absmax(col) -> tuple[float, float]:
    amax = mx = F(0)
    for v in col:
        if abs(v) > amax:
            amax, mx = F(abs(v)), F(v)
    return amax, mx


def test_signed_absmax_follows_the_strict_scan() -> None:
    x = np.array([[1, -3, 0, -0.0, 2, np.nan, np.nan, 5, np.inf, 1e-30],
                  [-2, 3, -0.0, 0, -2, 1, np.nan, -5, -np.inf, -1e-30],
                  [2, 0, 0, 0, 1, -4, np.nan, np.nan, 1, 0]], F)
    for axis, data in ((0, x), (1, np.ascontiguousarray(np.tile(x.T, (1, 4))))):
        amax, mx = pr.signed_absmax(data, axis=axis)
        cols = data.T if axis == 0 else data
        expect = [_scan_signed_absmax(c) for c in cols]
        assert _bits(amax) == _bits([e[0] for e in expect]), axis
        assert _bits(mx) == _bits([e[1] for e in expect]), axis       # ties: first; zeros: +0; NaN: never


def test_first_min_keeps_the_first_zeros_sign() -> None:
    x = np.array([[1, 0.0, -0.0, 3], [-0.0, -0.0, 0.0, -1], [0.0, 1, 2, 2]], F)
    assert np.signbit(pr.first_min(x)).tolist() == [True, False, True, True]
    rows = np.ascontiguousarray(np.tile(x.T, (1, 3)))
    assert np.signbit(pr.first_min(rows, axis=1)).tolist() == [True, False, True, True]


def test_max_gt_zero_and_max_macro_zero() -> None:
    v = np.array([[1, -1, np.nan, 0.5, -0.0],
                  [3, -2, 2, np.nan, -0.0],
                  [2, -0.5, 1, 0.25, 0.0],
                  [np.nan, -3, 0.5, 0.125, -0.0]], F)
    gt = [F(0)] * v.shape[1]
    mac = [F(0)] * v.shape[1]
    for row in v:
        gt = [r if r > g else g for r, g in zip(row, gt, strict=True)]      # if (v > m) m = v
        mac = [m if m > r else r for r, m in zip(row, mac, strict=True)]    # m = MAX(m, v)
    assert _bits(pr.max_gt_zero(v, axis=0)) == _bits(gt)
    assert _bits(pr.max_gt_zero(np.ascontiguousarray(v.T), axis=1)) == _bits(gt)
    assert _bits(pr.max_macro_zero(v)) == _bits(mac)
    pos = np.abs(v[:, :2]) + 1
    assert _bits(pr.max_macro_zero(pos)) == _bits(pos.max(axis=0))


def test_minmax_and_absmax_rows_lane_trick() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 32)) * 10.0 ** rng.integers(-3, 3, (37, 1))).astype(F)
    lo, hi = pr.minmax(x, axis=1)
    assert np.array_equal(lo, x.min(axis=1)) and np.array_equal(hi, x.max(axis=1))
    assert np.array_equal(pr.absmax_rows(x), np.abs(x).max(axis=1))
    assert _bits(pr.absmax_rows(np.full((2, 32), -0.0, F))) == [0, 0]


def test_packing_round_trips_and_layouts() -> None:
    rng = np.random.default_rng(9)
    q = rng.integers(0, 64, (5, 256), dtype=np.uint8)
    for span in (16, 32, 64):
        out = np.zeros((5, 130), np.uint8)
        pk.put_nibbles(out, 2, q, span)
        packed = out[:, 2:130]
        assert np.array_equal(pk.unpack_nibbles(packed, span), q & 15), span
        run = q[0, : 2 * span]
        assert packed[0, 0] == (run[0] & 15) | (run[span] & 15) << 4, span
    q2 = q & 3
    out = np.zeros((5, 66), np.uint8)
    pk.put_2bit(out, 2, q2)
    assert np.array_equal(pk.unpack_2bit(out[:, 2:]), q2)
    assert out[0, 2 + 33] == q2[0, 129] | q2[0, 161] << 2 | q2[0, 193] << 4 | q2[0, 225] << 6
    b = rng.integers(0, 2, (5, 4, 8), dtype=np.uint8)
    out = np.zeros((5, 6), np.uint8)
    pk.put_bits(out, 2, b)
    assert np.array_equal(pk.unpack_bits(out[:, 2:]), b)
    assert out[0, 2] == sum(int(b[0, 0, k]) << k for k in range(8))
    v = np.array([1.0, -2.5e-8, 70000.0, 0.33333334, -0.0], F)
    out = np.zeros((5, 4), np.uint8)
    with np.errstate(over="ignore"):                # 70000 -> inf, as GGML_FP32_TO_FP16
        pk.put_f16(out, 2, v)
        assert _bits(pk.get_f16(out, 2).ravel()) == _bits(v.astype(np.float16).astype(F))
