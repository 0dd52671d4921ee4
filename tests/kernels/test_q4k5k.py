"""Q4_K / Q5_K and their scale searches, byte for byte against ggml (libggml-base of the installed llama_cpp)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import kernels
from kernels.kquant_search import make_qkx2_quants, make_qkx3_quants, nearest_int, qkx_search_t

from .oracle import ggml_quantize

TYPES = [QT.Q4_K, QT.Q5_K]
N = 1024  # four super-blocks per row


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    c: dict[str, np.ndarray] = {}
    for scale in (1e-3, 0.02, 1.0, 300.0):
        c[f"normal*{scale:g}"] = rng.standard_normal((24, N)) * scale
    c["student_t2"] = rng.standard_t(2, (24, N))
    c["student_t1"] = rng.standard_t(1, (16, N)) * 0.05  # Cauchy: a few huge outliers per block
    c["tiny_1e-15"] = rng.standard_normal((8, N)) * 1e-15
    c["positive"] = np.abs(rng.standard_normal((8, N))) + 0.5            # min > 0 clamps to 0
    c["negative"] = -np.abs(rng.standard_normal((8, N))) - 0.5
    c["mixed_signs"] = np.where(rng.random((8, N)) < 0.5, -1, 1) * rng.uniform(0.5, 2.0, (8, N))
    c["sparse"] = rng.standard_normal((8, N)) * (rng.random((8, N)) < 0.1)
    c["few_levels"] = rng.integers(-2, 3, (8, N)) * 0.25                   # exact ties in the search
    special = rng.standard_normal((8, N))
    special[0] = 0.0                                  # all-zero row
    special[1, :256] = 0.0                            # all-zero super-block
    special[1, 256:288] = 0.0                         # all-zero sub-block inside a normal super-block
    special[2] = 0.75                                 # constant row
    special[3, 512:544] = -3.0                        # constant negative sub-block
    special[4, :256] *= 1e-15                         # tiny super-block next to normal ones
    special[5, ::7] = 40.0                            # strong positive outliers
    special[6, :32] = np.linspace(-1, 1, 32)          # evenly spaced sub-block
    c["subnormal"] = special[4:5] * 1e-39                                # iscale overflows to inf
    c["subnormal_pos"] = np.abs(special[4:5]) * 1e-39                    # the same with min clamped to 0
    huge = special[5:6].copy()
    huge[0, :64] = [3e38, -3e38] * 32                                    # max - min overflows to inf
    c["huge"] = huge
    c["special"] = special
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in c.items()}


CASES = _cases()


def _imatrices() -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(99)
    with_zeros = rng.random(N).astype(np.float32) * 3
    with_zeros[rng.random(N) < 0.3] = 0.0
    with_zeros[:32] = 0.0                              # a whole sub-block of zero importance
    return {"none": None,
            "random": (rng.random(N) ** 2 * 10).astype(np.float32),
            "zeros": with_zeros,
            "ones": np.ones(N, np.float32)}


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
def test_single_row_single_block_and_threads(qtype: QT) -> None:
    # one super-block (8 sub-blocks) and one sub-block of data per reduction column are the edge of the
    # sequential sums; threads split rows and must not change a byte.
    x = CASES["student_t2"]
    for im in (None, IMATRICES["random"]):
        one = x[:1, :256]
        _assert_same_blocks(kernels.quantize(one, qtype, imatrix=None if im is None else im[:256], threads=1),
                            ggml_quantize(one, qtype, None if im is None else im[:256]), qtype)
        ref = ggml_quantize(x, qtype, im)
        _assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=3), ref, qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype: QT) -> None:
    x = np.concatenate([CASES["normal*1"][:4], CASES["special"], CASES["student_t2"][:4]])
    data = ggml_quantize(x, qtype, IMATRICES["random"])
    ours = kernels.dequantize(data, qtype, x.shape)
    theirs = gguf.quants.dequantize(data, qtype).reshape(x.shape)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == np.float32
    # and the decoded values are a faithful approximation of the input
    err = np.sqrt(np.mean((ours[:4] - x[:4]) ** 2))
    assert err < (0.12 if qtype == QT.Q4_K else 0.06)


def _scalar_qkx(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """ggml make_qkx2/3_quants transcribed line by line with numpy float32 scalars (one block)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _scalar_qkx_body(x, w, nmax, rmin, rdelta, nstep, use_mad)


def _scalar_qkx_body(x, w, nmax, rmin, rdelta, nstep, use_mad):
    f = np.float32
    mn, mx, sw = x[0], x[0], w[0]
    sx = sw * x[0]
    for i in range(1, len(x)):
        mn, mx = (x[i] if x[i] < mn else mn), (x[i] if x[i] > mx else mx)
        sw += w[i]
        sx += w[i] * x[i]
    mn = f(0) if mn > 0 else mn
    if mx == mn:
        return f(0), -mn, np.zeros(len(x), np.uint8)

    def err(s, m, lv):
        e = f(0)
        for i in range(len(x)):
            dd = s * f(lv[i]) + m - x[i]
            e += w[i] * (abs(dd) if use_mad else dd * dd)
        return e

    def levels(isc):
        return np.clip(nearest_int(np.array([isc * (xi - mn) for xi in x], f)), 0, nmax)

    iscale = f(nmax) / (mx - mn)
    scale = f(1) / iscale
    best_l = levels(iscale)
    best = err(scale, mn, best_l)
    for step in range(nstep + 1):
        lv = levels((f(rmin) + f(rdelta) * f(step) + f(nmax)) / (mx - mn))
        sl = sl2 = sxl = f(0)
        for i in range(len(x)):
            sl += w[i] * f(lv[i])
            sl2 += w[i] * f(lv[i]) * f(lv[i])
            sxl += w[i] * f(lv[i]) * x[i]
        d = sw * sl2 - sl * sl
        if d > 0:
            ts, tm = (sw * sxl - sx * sl) / d, (sl2 * sx - sl * sxl) / d
            if tm > 0:
                tm, ts = f(0), sxl / sl2
            cur = err(ts, tm, lv)
            if cur < best:
                best_l, best, scale, mn = lv, cur, ts, tm
    return scale, -mn, best_l.astype(np.uint8)


@pytest.mark.parametrize("args", [(15, -1.0, 0.1, 20, False), (31, -0.5, 0.1, 15, False),
                                  (3, -0.5, 0.1, 15, True), (15, -0.9, 0.05, 36, False)])
def test_search_matches_scalar_transcription(args) -> None:
    # Q2_K uses use_mad=True with 16-value blocks; n=1 block exercises the single-column sum path.
    rng = np.random.default_rng(5)
    n = 16 if args[0] == 3 else 32
    x = (rng.standard_t(3, (12, n)) * rng.uniform(0.01, 2, (12, 1))).astype(np.float32)
    x[3] = 0.0
    x[4] = np.abs(x[4])
    w = (np.abs(x) + rng.uniform(0, 1, (12, 1))).astype(np.float32)
    for xs, ws in ((x, w), (x[:1], w[:1])):
        scale, the_min, lv = make_qkx2_quants(xs, ws, *args)
        for b in range(xs.shape[0]):
            s_ref, m_ref, l_ref = _scalar_qkx(xs[b], ws[b], *args)
            assert (scale[b], the_min[b]) == (s_ref, m_ref), b
            np.testing.assert_array_equal(lv[b], l_ref)
    s3, m3, l3 = make_qkx3_quants(x, None, *args)
    s3b, m3b, l3b = make_qkx3_quants(x, x * x, *args)
    np.testing.assert_array_equal(s3, s3b)
    np.testing.assert_array_equal(l3, l3b)
    assert s3.dtype == m3.dtype == np.float32 and l3.dtype == np.uint8 and l3.shape == x.shape


def test_search_exact_rounding_path_for_tiny_ranges() -> None:
    # ranges near the bottom of float32 make iscale overflow; ggml's nearest_int bit trick must be reproduced
    x = np.array([[0.0] * 31 + [1e-38], np.linspace(-1e-38, 1e-38, 32)], np.float32)
    w = np.ones_like(x)
    scale, the_min, lv = qkx_search_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), 15, -1.0, 0.1, 20,
                                      False)
    for b in range(2):
        s_ref, m_ref, l_ref = _scalar_qkx(x[b], w[b], 15, -1.0, 0.1, 20, False)
        assert (scale[b], the_min[b]) == (s_ref, m_ref)
        np.testing.assert_array_equal(lv[:, b], l_ref)


def test_nearest_int_is_ggml_bit_trick() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49, -7.51, 4194303.0], np.float32)
    np.testing.assert_array_equal(nearest_int(v), [0, 2, 2, 0, -2, 3, -8, 4194303])
    assert nearest_int(np.array([np.inf], np.float32))[0] == -4194304


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_smollm2_weights_equal_ggml(qtype: QT, smollm2_checkpoint) -> None:
    # the real model's ffn_down (1536 wide, the only SmolLM2 tensor llama.cpp gives k-quants), half of its rows
    from safetensors import safe_open

    with safe_open(str(smollm2_checkpoint / "model.safetensors"), "np") as f:
        w = f.get_tensor("model.layers.3.mlp.down_proj.weight")[::2].astype(np.float32)
    qw = np.random.default_rng(7).gamma(0.5, 2.0, w.shape[1]).astype(np.float32)
    for im in (None, qw):
        _assert_same_blocks(kernels.quantize(w, qtype, imatrix=im, threads=1), ggml_quantize(w, qtype, im), qtype)


@pytest.mark.parametrize("pieces", ["encoder", "search"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_chunking_does_not_change_bytes(qtype: QT, pieces: str, monkeypatch) -> None:
    # tiny chunks: many encoder calls / many search pieces, each with its own clamping decisions
    import kernels.kquant_search as kquant_search
    import kernels.q4k5k as q4k5k

    if pieces == "encoder":
        monkeypatch.setattr(q4k5k, "SEARCH_SUB_BLOCKS", 24)
        monkeypatch.setattr(q4k5k, "VALUES_PER_CHUNK", 3 * N)
    else:
        monkeypatch.setattr(kquant_search, "SEARCH_VALUES", 32 * 256)   # pieces of 256 sub-blocks
    x = np.concatenate([CASES["student_t2"][:6], CASES["special"], CASES["positive"][:2]])
    for im in (None, IMATRICES["zeros"]):
        _assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=1), ggml_quantize(x, qtype, im), qtype)


def _scalar_qp(x, w, nmax):
    """ggml make_qp_quants transcribed with numpy float32 scalars (one group); L as uint8, as ggml stores it."""
    f = np.float32

    def ni(v):
        return int(nearest_int(np.array([v], f))[0])

    mx = f(0)
    for v in x:
        mx = mx if mx > v else v
    if mx < f(1e-15):
        return f(0), np.zeros(len(x), np.uint8)
    iscale = f(nmax) / mx
    lv = [ni(iscale * v) & 0xFF for v in x]
    scale = f(1) / iscale
    best = f(0)
    for i in range(len(x)):
        diff = x[i] - scale * f(lv[i])
        best += w[i] * diff * diff
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        isc = (f(0.1) * f(step) + f(nmax)) / mx
        sc, mse = f(1) / isc, f(0)
        for i in range(len(x)):
            diff = x[i] - sc * f(min(nmax, ni(isc * x[i])))
            mse += w[i] * diff * diff
        if mse < best:
            best, iscale = mse, isc
    sumlx = suml2 = f(0)
    for i in range(len(x)):
        li = min(nmax, ni(iscale * x[i]))
        lv[i] = li & 0xFF
        sumlx += w[i] * x[i] * f(li)
        suml2 += w[i] * f(li) * f(li)
    for _ in range(5):
        changed = 0
        for i in range(len(x)):
            slx = sumlx - w[i] * x[i] * f(lv[i])
            sl2 = suml2 - w[i] * f(lv[i]) * f(lv[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, ni(x[i] * sl2 / slx))
                if new_l != lv[i]:
                    slx += w[i] * x[i] * f(new_l)
                    sl2 += w[i] * f(new_l) * f(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        lv[i], sumlx, suml2 = new_l & 0xFF, slx, sl2
                        changed += 1
        if not changed:
            break
    return (sumlx / suml2 if suml2 > 0 else f(0)), np.array(lv, np.uint8)


def test_make_qp_quants_matches_scalar_transcription() -> None:
    from kernels.kquant_search import make_qp_quants

    rng = np.random.default_rng(11)
    x = (rng.gamma(2.0, 1.0, (8, 40)) * rng.uniform(1e-3, 10, 40)).astype(np.float32)
    x[:, 5] = 0.0                                     # all zero: scale 0
    x[3, 6] = -0.7 * x[:, 6].max()                    # a negative value: its level wraps modulo 256
    x[:, 7] = 1e-16                                   # below GROUP_MAX_EPS
    w = rng.uniform(0, 3, (8, 40)).astype(np.float32)
    w[:, 8] = 0.0                                     # zero weights
    scale, lv = make_qp_quants(x, 63, w)
    for b in range(x.shape[1]):
        s_ref, l_ref = _scalar_qp(x[:, b], w[:, b], 63)
        assert scale[b] == s_ref, b
        np.testing.assert_array_equal(lv[:, b], l_ref)
