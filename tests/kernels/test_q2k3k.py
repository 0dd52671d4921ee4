"""Q2_K / Q3_K and their searches, byte for byte against ggml (libggml-base of the installed llama_cpp)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import kernels
from kernels.q23_search import make_q3_quants, make_qp_quants, nearest_int, seq_sum

from .oracle import ggml_quantize

TYPES = [QT.Q2_K, QT.Q3_K]
N = 1024  # four super-blocks per row


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2323)
    c: dict[str, np.ndarray] = {}
    # 1e-7/1e-5: fp16 d underflows / is subnormal; 1e6: fp16 d overflows to inf; 1e15: x^3 overflows (NaN sums)
    for scale in (1e-7, 1e-5, 1e-3, 0.02, 1.0, 300.0, 1e6, 1e15):
        c[f"normal*{scale:g}"] = rng.standard_normal((16, N)) * scale
    c["student_t2"] = rng.standard_t(2, (24, N))
    c["student_t1"] = rng.standard_t(1, (16, N)) * 0.05      # Cauchy: huge outliers in most blocks
    c["tiny_1e-15"] = rng.standard_normal((8, N)) * 1e-15     # groups on both sides of GROUP_MAX_EPS
    thr = rng.choice(np.array([1e-15, np.nextafter(np.float32(1e-15), np.float32(0)), -1e-15, 0.0], np.float32),
                     (4, N))
    c["threshold_1e-15"] = thr
    c["positive"] = np.abs(rng.standard_normal((8, N))) + 0.5
    c["negative"] = -np.abs(rng.standard_normal((8, N))) - 0.5
    c["mixed_signs"] = np.where(rng.random((8, N)) < 0.5, -1, 1) * rng.uniform(0.5, 2.0, (8, N))
    c["alternating"] = np.tile([1.0, -1.0], (4, N // 2)) * rng.uniform(0.9, 1.1, (4, N))
    c["sparse"] = rng.standard_normal((8, N)) * (rng.random((8, N)) < 0.1)
    c["few_levels"] = rng.integers(-4, 5, (8, N)) * 0.25       # +a and -a ties for the largest magnitude
    special = rng.standard_normal((12, N))
    special[0] = 0.0                                  # all-zero row
    special[1, :256] = 0.0                            # all-zero super-block
    special[1, 256:272] = 0.0                         # all-zero group inside a normal super-block
    special[2] = 0.75                                 # constant row
    special[3, 512:528] = -3.0                        # constant negative group
    special[3, 768:] = -2.0                           # constant negative super-block
    special[4, :256] *= 1e-15                         # tiny super-block next to normal ones
    special[5, ::7] = 40.0                            # strong positive outliers
    special[6, :32] = np.linspace(-1, 1, 32)          # evenly spaced groups
    special[7, 256:512] = -0.0                        # negative zeros
    special[8, ::16] = -50.0                          # one large negative per group
    special[9, 16:256] *= 1e-4                        # one dominant group: the others get tiny 4/6-bit scales
    special[10, :256] = 1e-3 * np.arange(256) % 7     # constant groups at different levels
    special[11, 1::2] = -special[11, ::2]             # exact +a/-a pairs
    c["special"] = special
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in c.items()}


CASES = _cases()


def _imatrices() -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(77)
    with_zeros = rng.random(N).astype(np.float32) * 3
    with_zeros[rng.random(N) < 0.3] = 0.0
    with_zeros[:16] = 0.0                              # a whole group of zero importance
    with_zeros[512:768] = 0.0                          # a whole super-block of zero importance
    return {"none": None,
            "random": (rng.random(N) ** 2 * 10).astype(np.float32),
            "zeros": with_zeros,
            "ones": np.ones(N, np.float32),
            "tiny": (rng.random(N) * 1e-30).astype(np.float32)}


IMATRICES = _imatrices()


def _assert_same_blocks(ours: np.ndarray, ref: np.ndarray, qtype: QT) -> None:
    size = kernels.get_kernel(qtype).type_size
    a, b = ours.reshape(-1, size), ref.reshape(-1, size)
    same = (a == b).all(axis=1)
    bad = np.flatnonzero(~same)
    assert same.all(), f"{len(bad)}/{len(same)} blocks differ from ggml, first {bad[:5].tolist()}"


@pytest.mark.parametrize("im", list(IMATRICES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml(qtype: QT, case: str, im: str) -> None:
    x, qw = CASES[case], IMATRICES[im]
    ours = kernels.quantize(x, qtype, imatrix=qw, threads=1)
    assert ours.shape == (x.shape[0], kernels.row_bytes(qtype, N))
    _assert_same_blocks(ours, ggml_quantize(x, qtype, qw), qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_real_smollm2_weights(qtype: QT, smollm2_checkpoint) -> None:
    from safetensors.numpy import load_file

    w = load_file(str(smollm2_checkpoint / "model.safetensors"))
    x = np.ascontiguousarray(np.concatenate([w[f"model.layers.{i}.mlp.down_proj.weight"][:64] for i in (0, 29)]),
                             dtype=np.float32)                       # (128, 1536): 6 super-blocks per row
    qw = (x.astype(np.float64) ** 2).mean(axis=0).astype(np.float32) * 100   # an activation-like imatrix
    for im in (None, qw):
        _assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=1), ggml_quantize(x, qtype, im), qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_single_row_single_block_and_threads(qtype: QT) -> None:
    x = CASES["student_t2"]
    one = np.ascontiguousarray(x[:1, :256])
    _assert_same_blocks(kernels.quantize(one, qtype, threads=1), ggml_quantize(one, qtype), qtype)
    big = np.ascontiguousarray(np.concatenate([CASES["normal*1"], CASES["student_t2"], CASES["special"]]))
    qw = IMATRICES["zeros"]
    for im in (None, qw):
        assert np.array_equal(kernels.quantize(big, qtype, imatrix=im, threads=3),
                              kernels.quantize(big, qtype, imatrix=im, threads=1))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype: QT) -> None:
    x = np.ascontiguousarray(np.concatenate([CASES["student_t2"], CASES["special"], CASES["normal*1e+06"]]))
    for im in (None, IMATRICES["random"]):
        data = ggml_quantize(x, qtype, im)
        ours = kernels.dequantize(data, qtype, x.shape)
        with np.errstate(all="ignore"):
            ref = gguf.quants.dequantize(data, qtype).reshape(x.shape).astype(np.float32)
        assert ours.dtype == np.float32 and ours.shape == x.shape
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    sane = slice(0, -16)                              # the 1e6 rows decode to inf/nan, as in ggml (fp16 d overflows)
    assert np.isfinite(ours[sane]).all()
    err = np.abs(ours[sane] - x[sane]).mean() / np.abs(x[sane]).mean()
    assert err < 0.5, err


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bad_input_is_a_typed_error(qtype: QT) -> None:
    with pytest.raises(kernels.ShapeError):
        kernels.quantize(np.zeros((2, 300), np.float32), qtype)
    bad = np.zeros((2, 256), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(kernels.NonFiniteError):
        kernels.quantize(bad, qtype)
    with pytest.raises(kernels.ImatrixError):
        kernels.quantize(np.zeros((2, 256), np.float32), qtype, imatrix=np.ones(255, np.float32))
    with pytest.raises(kernels.ImatrixError):
        kernels.quantize(np.zeros((2, 256), np.float32), qtype, imatrix=-np.ones(256, np.float32))


def test_search_helpers_follow_ggml_arithmetic() -> None:
    rng = np.random.default_rng(5)
    t = (rng.standard_normal((16, 40)) * 10.0 ** rng.integers(-8, 8, (16, 40))).astype(np.float32)
    expect = np.float32(0) + t[0]
    for r in t[1:]:
        expect = expect + r
    assert np.array_equal(seq_sum(t).view(np.uint32), expect.view(np.uint32))
    assert seq_sum(-np.zeros((3, 2), np.float32)).view(np.uint32).tolist() == [0, 0]   # 0.0f + -0.0f = +0.0f
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 4194303.0, 3e7, -1e9], np.float32)
    magic = (v + np.float32(12582912.0)).view(np.int32)
    assert nearest_int(v).tolist() == ((magic & 0x7FFFFF) - 0x400000).tolist()
    assert nearest_int(v[:6]).tolist() == [0, 2, 2, 0, -2, 4194303]
    # the vectorised searches give the same answer per group as when that group is searched alone
    x = CASES["student_t2"][:4].reshape(-1, 16)
    s_all, l_all = make_q3_quants(x, 4)
    for g in range(0, x.shape[0], 37):
        s1, l1 = make_q3_quants(x[g:g + 1], 4)
        assert s1[0] == s_all[g] and np.array_equal(l1[0], l_all[g])
    sw = np.abs(x[:, ::-1]) + np.float32(0.1)
    s_all, l_all = make_qp_quants(np.abs(x), 15, sw)
    assert l_all.max() <= 15
    for g in range(0, x.shape[0], 37):
        s1, l1 = make_qp_quants(np.abs(x[g:g + 1]), 15, sw[g:g + 1])
        assert s1[0] == s_all[g] and np.array_equal(l1[0], l_all[g])


def _nearest_int_scalar(v: np.float32) -> int:
    return int((np.array([v], np.float32) + np.float32(12582912.0)).view(np.int32)[0] & 0x7FFFFF) - 0x400000


def _make_qp_quants_scalar(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.float32, list[int]]:
    """ggml's make_qp_quants transcribed line by line with float32 scalars (one group); L as uint8_t."""
    f, n = np.float32, len(x)
    mx = f(0)
    for v in x:
        mx = mx if mx > v else v
    if mx < f(1e-15):
        return f(0), [0] * n
    iscale = f(nmax) / mx
    L = [_nearest_int_scalar(iscale * x[i]) & 0xFF for i in range(n)]
    scale = f(1) / iscale
    best = f(0)
    for i in range(n):
        diff = x[i] - scale * f(L[i])
        best = best + (qw[i] * diff) * diff
    for s in [-4, -3, -2, -1, 1, 2, 3, 4]:
        isc = (f(0.1) * f(s) + f(nmax)) / mx
        sc = f(1) / isc
        mse = f(0)
        for i in range(n):
            diff = x[i] - sc * f(min(nmax, _nearest_int_scalar(isc * x[i])))
            mse = mse + (qw[i] * diff) * diff
        if mse < best:
            best, iscale = mse, isc
    sumlx = suml2 = f(0)
    for i in range(n):
        l = min(nmax, _nearest_int_scalar(iscale * x[i]))
        L[i] = l & 0xFF
        sumlx = sumlx + (qw[i] * x[i]) * f(l)
        suml2 = suml2 + (qw[i] * f(l)) * f(l)
    for _ in range(5):
        changed = 0
        for i in range(n):
            slx = sumlx - (qw[i] * x[i]) * f(L[i])
            sl2 = suml2 - (qw[i] * f(L[i])) * f(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, _nearest_int_scalar((x[i] * sl2) / slx))
                if new_l != L[i]:
                    slx = slx + (qw[i] * x[i]) * f(new_l)
                    sl2 = sl2 + (qw[i] * f(new_l)) * f(new_l)
                    if (slx * slx) * suml2 > (sumlx * sumlx) * sl2:
                        L[i], sumlx, suml2 = new_l & 0xFF, slx, sl2
                        changed += 1
        if not changed:
            break
    return (sumlx / suml2 if suml2 > 0 else f(0)), L


def test_make_qp_quants_matches_a_literal_port() -> None:
    """Also the path no ggml encoder reaches with real data: negative inputs (levels wrap as uint8_t)."""
    rng = np.random.default_rng(11)
    x = np.abs(rng.standard_normal((60, 16))).astype(np.float32)
    x[20:40] -= np.float32(0.3)                        # some negative values
    x[40:45] = 0.0
    x[45:50] *= np.float32(1e-16)
    qw = rng.random((60, 16)).astype(np.float32)
    qw[50:55, :8] = 0.0
    scale, L = make_qp_quants(x, 15, qw)
    for g in range(x.shape[0]):
        s1, l1 = _make_qp_quants_scalar(x[g], 15, qw[g])
        assert scale[g].view(np.uint32) == np.float32(s1).view(np.uint32), g
        assert L[g].tolist() == l1, g


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_row_chunks(qtype: QT, monkeypatch) -> None:
    import kernels.q2k

    monkeypatch.setattr(kernels.q2k, "CHUNK_WEIGHTS", 3 * N)        # 3 rows per chunk, a short last chunk
    x = np.ascontiguousarray(np.concatenate([CASES["special"], CASES["student_t2"][:5]]))
    for im in (None, IMATRICES["zeros"]):
        _assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=1), ggml_quantize(x, qtype, im), qtype)
