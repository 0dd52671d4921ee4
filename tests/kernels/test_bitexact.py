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

from .datagen import imatrices, mixed_cases
from .oracle import assert_same_blocks, ggml_quantize

ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
N = 512  # two 256-value super-blocks per row: modest, because the k-quant searches are slow in numpy
CASES = mixed_cases(N)   # includes rows at 1e20, 1e30, 1e37 and groups mixing 1e10..1e20
IMATRIX_KINDS = ["none", "random", "zeros", "huge"]


def _imatrix(kind: str, n: int, seed: int = 7) -> np.ndarray | None:
    return imatrices(n, seed)[kind]


def _id(v) -> str:
    return v.name if isinstance(v, QT) else str(v)


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=_id)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_bitexact_synthetic(qtype: QT, imatrix_kind: str) -> None:
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
def test_bitexact_smollm2(qtype: QT, imatrix_kind: str, smollm2_weights) -> None:
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
    with np.errstate(all="ignore"):  # the overflow rows decode to inf/NaN (fp16 scales of inf), as in ggml
        ref = gguf.quants.dequantize(data, qtype).reshape(CASES.shape).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == CASES.shape
    diff = np.count_nonzero(ours.view(np.uint32) != ref.view(np.uint32))
    assert diff == 0, f"{qtype.name}: {diff} values differ from gguf.quants.dequantize"


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q5_1, QT.Q6_K, QT.Q4_K], ids=_id)
def test_threads_give_the_same_bytes(qtype: QT) -> None:
    x = CASES[:48] if qtype in (QT.Q4_K,) else np.concatenate([CASES, CASES[::-1]])
    qw = _imatrix("random", N)
    one = kernels.quantize(x, qtype, imatrix=qw, threads=1)
    two = kernels.quantize(x, qtype, imatrix=qw, threads=2)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16], ids=_id)
def test_float_types_on_all_exponents(qtype: QT) -> None:
    """F16/BF16 round with integer ops: random finite bit patterns (every exponent, subnormals, both signs)
    and a few ulps around each rounding boundary (fp16 max/overflow, normal/subnormal edge, bf16 ties)."""
    rng = np.random.default_rng(16)
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    edges = np.array([65504.0, 65520.0, 2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 1.0, 3.4e38, 1e-45],
                     np.float32).view(np.uint32)
    near = (edges[:, None] + np.arange(-4, 5, dtype=np.int64)).astype(np.uint32).ravel()
    ties = (rng.integers(0, 2**16, 4096, dtype=np.uint64) << 16 | 0x8000).astype(np.uint32)
    x = np.concatenate([bits, near, near | 0x80000000, ties]).view(np.float32)
    x = x[np.isfinite(x)]
    x = np.ascontiguousarray(x[: x.size // 256 * 256].reshape(-1, 256))
    assert_same_blocks(kernels.quantize(x, qtype, threads=1), ggml_quantize(x, qtype), qtype, "bit patterns")


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_id)
def test_single_block_rows_and_input_untouched(qtype: QT) -> None:
    """One block per call (a chunk of one block is where a transpose can alias its input) gives ggml's bytes
    and never writes to the caller's array."""
    block = max(32, kernels.get_kernel(qtype).block_size)
    for x in (CASES[:1, :block], CASES[9:12, :block], CASES[:1]):
        x = np.ascontiguousarray(x)
        before = x.copy()
        for qw in (None, _imatrix("random", N)[:x.shape[1]]):
            assert_same_blocks(kernels.quantize(x, qtype, imatrix=qw, threads=1), ggml_quantize(x, qtype, qw),
                               qtype, f"{x.shape}, imatrix={qw is not None}")
            assert np.array_equal(x.view(np.uint32), before.view(np.uint32))


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


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1], ids=_id)
def test_legacy_chunks(monkeypatch, qtype, smollm2_weights) -> None:
    """The 32-value types encode in chunks of blocks (reference) or of whole rows (imatrix): odd chunk sizes
    give the same bytes."""
    import kernels.legacy

    monkeypatch.setattr(kernels.legacy, "_CHUNK_BLOCKS", 5)
    monkeypatch.setattr(kernels.legacy, "_IMPL_ROW_ELEMS", 4000)  # two 1536-wide rows per chunk
    x = smollm2_weights["down_proj"][:5]
    for w in (None, _imatrix("random", x.shape[1], seed=3)):
        assert_same_blocks(kernels.quantize(x, qtype, imatrix=w, threads=1), ggml_quantize(x, qtype, w),
                           qtype, f"chunked, imatrix={w is not None}")
