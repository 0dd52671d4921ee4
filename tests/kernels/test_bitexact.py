"""Every kernel, byte for byte against ggml's own encoders (``ggml_quantize_chunk`` of the libggml-base bundled
with the installed llama_cpp, see oracle.py), with and without an importance matrix; plus the round trip through
gguf's decoders, bad input, and thread splitting.

The oracle is never skipped: if the library cannot be loaded, these tests fail.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import kernels
from kernels.errors import ImatrixError, NonFiniteError, ShapeError, UnsupportedTypeError

from .oracle import ggml_quantize

ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
N = 512  # two 256-value super-blocks per row: modest, because the k-quant searches are slow in numpy


def _cases() -> np.ndarray:
    """One (rows, N) float32 matrix; each row is one kind of data, the last rows mix kinds block by block."""
    rng = np.random.default_rng(20240607)
    rows = [rng.standard_normal((4, N)) * s for s in (1e-3, 1.0, 1e3)]
    rows.append(rng.standard_t(2, (4, N)))                                  # heavy tails
    rows.append(np.zeros((1, N)))                                           # all-zero blocks
    const = np.repeat(rng.uniform(-2, 2, N // 32), 32)[None]                # constant 32-blocks
    const[0, :256] = 0.375                                                  # a constant super-block
    rows.append(const)
    rows.append(rng.standard_normal((2, N)) * 1e-15)                        # near GROUP_MAX_EPS
    rows.append(rng.standard_normal((1, N)) * np.repeat([3e-16, 2e-15, 8e-16, 1e-14], N // 4))
    rows.append(np.abs(rng.standard_normal((1, N))) + 0.25)                 # all positive
    rows.append(-np.abs(rng.standard_normal((1, N))) - 0.25)                # all negative
    rows.append(np.where(np.arange(N) % 2, -1.0, 1.0)[None] * rng.uniform(0.5, 1.5, (1, N)))
    rows.append(rng.integers(-3, 4, (2, N)) * 0.125)                        # few levels: exact ties
    kinds = [np.zeros(32), np.full(32, -0.7), rng.standard_normal(32) * 1e-15, rng.standard_t(2, 32) * 50,
             rng.standard_normal(32), np.where(rng.random(32) < 0.5, 0.0, 1e-3), rng.standard_normal(32) * 1e3]
    mixed = np.stack([np.concatenate([kinds[(r + b) % len(kinds)] for b in range(N // 32)]) for r in range(4)])
    rows.append(mixed)                                                      # rows mixing all of the above
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


CASES = _cases()


def _imatrix(kind: str | None, n: int, seed: int = 7) -> np.ndarray | None:
    if kind is None:
        return None
    rng = np.random.default_rng(seed)
    w = (rng.random(n) ** 2 * 5 + 1e-3).astype(np.float32)
    if kind == "some_zero":
        w[rng.random(n) < 0.3] = 0.0
        w[:32] = 0.0  # a whole block without importance
    return w


IMATRIX_KINDS = [None, "positive", "some_zero"]


def assert_same_blocks(ours: np.ndarray, ref: np.ndarray, qtype: QT, what: str) -> None:
    """100% of blocks identical; the message counts the differing blocks and shows the first one."""
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    ts = kernels.get_kernel(qtype).type_size
    a, b = ours.reshape(-1, ts), ref.reshape(-1, ts)
    bad = np.nonzero((a != b).any(axis=1))[0]
    if bad.size:
        i = int(bad[0])
        pytest.fail(f"{qtype.name} {what}: {bad.size} of {len(a)} blocks differ from ggml; first: block {i}\n"
                    f"  ours: {a[i].tolist()}\n  ggml: {b[i].tolist()}")


def _id(v) -> str:
    return v.name if isinstance(v, QT) else str(v)


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=_id)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_bitexact_synthetic(qtype: QT, imatrix_kind: str | None) -> None:
    qw = _imatrix(imatrix_kind, N)
    ours = kernels.quantize(CASES, qtype, imatrix=qw, threads=1)
    assert_same_blocks(ours, ggml_quantize(CASES, qtype, qw), qtype, f"synthetic, imatrix={imatrix_kind}")


@pytest.fixture(scope="module")
def smollm2_weights(smollm2_checkpoint) -> dict[str, np.ndarray]:
    """Slices of real SmolLM2 tensors: a 576-wide q_proj and the 1536-wide ffn_down (down_proj)."""
    from safetensors import safe_open

    with safe_open(str(smollm2_checkpoint / "model.safetensors"), framework="numpy") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")[:48]
        down = f.get_tensor("model.layers.3.mlp.down_proj.weight")[:24]
    return {"q_proj": np.ascontiguousarray(q, dtype=np.float32),
            "down_proj": np.ascontiguousarray(down, dtype=np.float32)}


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=_id)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_bitexact_smollm2(qtype: QT, imatrix_kind: str | None, smollm2_weights) -> None:
    block = kernels.get_kernel(qtype).block_size
    names = [k for k, v in smollm2_weights.items() if v.shape[1] % block == 0]
    assert "down_proj" in names
    for name in names:
        x = smollm2_weights[name]
        qw = _imatrix(imatrix_kind, x.shape[1], seed=11)
        ours = kernels.quantize(x, qtype, imatrix=qw, threads=1)
        assert_same_blocks(ours, ggml_quantize(x, qtype, qw), qtype, f"SmolLM2 {name}, imatrix={imatrix_kind}")


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_dequantize_matches_gguf(qtype: QT) -> None:
    """Our decoder equals gguf-py's on the same (ggml-made) bytes, bit for bit."""
    data = ggml_quantize(CASES, qtype)
    ours = kernels.dequantize(data, qtype, CASES.shape)
    ref = gguf.quants.dequantize(data, qtype).reshape(CASES.shape).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == CASES.shape
    diff = np.count_nonzero(ours.view(np.uint32) != ref.view(np.uint32))
    assert diff == 0, f"{qtype.name}: {diff} values differ from gguf.quants.dequantize"


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q5_1, QT.Q6_K, QT.Q4_K], ids=_id)
def test_threads_give_the_same_bytes(qtype: QT) -> None:
    x = CASES[:48] if qtype in (QT.Q4_K,) else np.concatenate([CASES, CASES[::-1]])
    qw = _imatrix("positive", N)
    one = kernels.quantize(x, qtype, imatrix=qw, threads=1)
    two = kernels.quantize(x, qtype, imatrix=qw, threads=2)
    assert np.array_equal(one, two)


# ---- bad input ---------------------------------------------------------------------------------------------
QUANT_TYPES = [t for t in ALL_TYPES if kernels.get_kernel(t).block_size > 1]
IMATRIX_TYPES = [t for t in ALL_TYPES if kernels.get_kernel(t).uses_imatrix]


def test_imatrix_types_are_the_ones_ggml_weights() -> None:
    assert set(IMATRIX_TYPES) == {QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K}


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=_id)
def test_row_not_a_block_multiple(qtype: QT) -> None:
    block = kernels.get_kernel(qtype).block_size
    with pytest.raises(ShapeError, match="multiple of the block size") as e:
        kernels.quantize(np.ones((2, block + 16), np.float32), qtype)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ShapeError):
        kernels.row_bytes(qtype, block * 3 - 1)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_wrong_dtype_or_ndim(qtype: QT) -> None:
    n = 256
    with pytest.raises(ShapeError, match="float32"):
        kernels.quantize(np.ones((2, n), np.float64), qtype)
    with pytest.raises(ShapeError, match="float32"):
        kernels.quantize(np.ones((2, n), np.float16), qtype)
    with pytest.raises(ShapeError, match="2-D"):
        kernels.quantize(np.ones(n, np.float32), qtype)
    with pytest.raises(ShapeError, match="2-D"):
        kernels.quantize(np.ones((2, 2, n), np.float32), qtype)
    with pytest.raises(ShapeError):
        kernels.quantize([[1.0] * n], qtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_non_finite_data(qtype: QT, bad: float) -> None:
    x = np.ones((3, 256), np.float32)
    x[2, 77] = bad
    with pytest.raises(NonFiniteError, match="row 2, column 77") as e:
        kernels.quantize(x, qtype)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("qtype", IMATRIX_TYPES, ids=_id)
def test_bad_imatrix(qtype: QT) -> None:
    x = np.ones((2, 256), np.float32)
    good = np.ones(256, np.float32)
    for bad, why in [(good[:128], "one weight per column"), (np.ones(512, np.float32), "one weight per column"),
                     (np.ones((2, 256), np.float32), "one weight per column"),
                     (np.where(np.arange(256) == 5, -1.0, 1.0).astype(np.float32), "negative"),
                     (np.where(np.arange(256) == 5, np.nan, 1.0).astype(np.float32), "NaN")]:
        with pytest.raises(ImatrixError, match=why) as e:
            kernels.quantize(x, qtype, imatrix=bad)
        assert isinstance(e.value, ValueError)
    kernels.quantize(x, qtype, imatrix=good.astype(np.float64))  # other float widths are fine


def test_unknown_type() -> None:
    with pytest.raises(UnsupportedTypeError) as e:
        kernels.quantize(np.ones((1, 32), np.float32), "IQ2_XXS")
    assert isinstance(e.value, ValueError)
    assert kernels.row_bytes("q8_0", 64) == 68 and kernels.row_bytes(QT.Q6_K, 512) == 420


def test_dequantize_wrong_size() -> None:
    data = kernels.quantize(np.ones((2, 64), np.float32), QT.Q8_0)
    with pytest.raises(ShapeError):
        kernels.dequantize(data, QT.Q8_0, (3, 64))


def test_q6_k_chunks_split_rows(monkeypatch, smollm2_weights) -> None:
    """Q6_K encodes in chunks of super-blocks; a chunk that starts mid-row must still pair each super-block
    with its own imatrix columns."""
    import kernels.q6k

    monkeypatch.setattr(kernels.q6k, "_CHUNK_BLOCKS", 7)  # 1536-wide rows: 6 super-blocks per row
    x = smollm2_weights["down_proj"][:9]
    qw = _imatrix("some_zero", x.shape[1], seed=5)
    for w in (None, qw):
        assert_same_blocks(kernels.quantize(x, QT.Q6_K, imatrix=w, threads=1), ggml_quantize(x, QT.Q6_K, w),
                           QT.Q6_K, f"chunked, imatrix={w is not None}")


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1], ids=_id)
def test_legacy_chunks(monkeypatch, qtype, smollm2_weights) -> None:
    """The 32-value types encode in chunks of blocks (reference) or of whole rows (imatrix): odd chunk sizes
    give the same bytes."""
    import kernels.legacy

    monkeypatch.setattr(kernels.legacy, "_CHUNK_BLOCKS", 5)
    monkeypatch.setattr(kernels.legacy, "_IMPL_ROW_ELEMS", 4000)  # two 1536-wide rows per chunk
    x = smollm2_weights["down_proj"][:5]
    for w in (None, _imatrix("positive", x.shape[1], seed=3)):
        assert_same_blocks(kernels.quantize(x, qtype, imatrix=w, threads=1), ggml_quantize(x, qtype, w),
                           qtype, f"chunked, imatrix={w is not None}")
