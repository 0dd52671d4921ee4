"""The super-block types Q2_K..Q6_K byte for byte against ggml (libggml-base of the installed llama_cpp), on the
data that breaks their searches, with every kind of imatrix; chunking and threads; decoding."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import kernels

from .datagen import imatrices, kquant_cases
from .oracle import assert_same_blocks, ggml_quantize

TYPES = [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
N = 1024  # four super-blocks per row
CASES = kquant_cases(N)
IMATRICES = imatrices(N)


def _name(t: QT) -> str:
    return t.name


@pytest.mark.parametrize("im", list(IMATRICES))
@pytest.mark.parametrize("qtype", TYPES, ids=_name)
def test_bytes_equal_ggml(qtype: QT, im: str) -> None:
    """Every case of kquant_cases (one test per type and imatrix; the failure names the cases)."""
    qw = IMATRICES[im]
    failures = []
    for case, x in CASES.items():
        ours = kernels.quantize(x, qtype, imatrix=qw, threads=1)
        assert ours.shape == (x.shape[0], kernels.row_bytes(qtype, N))
        try:
            assert_same_blocks(ours, ggml_quantize(x, qtype, qw), qtype, f"{case}, imatrix={im}")
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def down_proj(smollm2_checkpoint) -> np.ndarray:
    """Real SmolLM2 ffn_down rows (1536 wide, six super-blocks per row) of a first and a last layer."""
    from safetensors import safe_open

    with safe_open(str(smollm2_checkpoint / "model.safetensors"), framework="numpy") as f:
        parts = [f.get_tensor(f"model.layers.{i}.mlp.down_proj.weight")[:64] for i in (0, 29)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


@pytest.mark.parametrize("qtype", TYPES, ids=_name)
def test_real_smollm2_weights(qtype: QT, down_proj) -> None:
    x = down_proj
    activation_like = (x.astype(np.float64) ** 2).mean(axis=0).astype(np.float32) * 100
    skewed = np.random.default_rng(7).gamma(0.5, 2.0, x.shape[1]).astype(np.float32)
    for im in (None, activation_like, skewed):
        assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=1), ggml_quantize(x, qtype, im), qtype,
                           f"SmolLM2 down_proj, imatrix={im is not None}")


@pytest.mark.parametrize("qtype", TYPES, ids=_name)
def test_single_block_and_threads(qtype: QT) -> None:
    # one super-block is the edge of the sequential sums (a single column); threads split rows and must not
    # change a byte
    x = CASES["student_t2"]
    for im in (None, IMATRICES["random"]):
        one = np.ascontiguousarray(x[:1, :256])
        qw1 = None if im is None else im[:256]
        assert_same_blocks(kernels.quantize(one, qtype, imatrix=qw1, threads=1), ggml_quantize(one, qtype, qw1),
                           qtype, "one super-block")
        big = np.concatenate([CASES["normal*1"], x, CASES["special"]])
        assert_same_blocks(kernels.quantize(big, qtype, imatrix=im, threads=3), ggml_quantize(big, qtype, im),
                           qtype, "threads=3")


@pytest.mark.parametrize("pieces", ["rows", "sub_blocks", "search"])
@pytest.mark.parametrize("qtype", TYPES, ids=_name)
def test_chunking_does_not_change_bytes(qtype: QT, pieces: str, monkeypatch) -> None:
    """Tiny chunks at each level (row chunks, Q6_K block chunks that start mid-row, the sub-block pieces of
    Q4_K/Q5_K, the pieces of the qkx search): many calls, each with its own clamping decisions."""
    import kernels.q2k
    import kernels.q3k
    import kernels.q4k5k
    import kernels.q6k
    import kernels.qkx_search

    if pieces == "rows":
        for cls in (kernels.q2k.Q2_K, kernels.q3k.Q3_K, kernels.q4k5k.Q4_K, kernels.q4k5k.Q5_K):
            monkeypatch.setattr(cls, "chunk_values", 3 * N)               # 3 rows per chunk, a short last one
        monkeypatch.setattr(kernels.q6k, "_CHUNK_BLOCKS", 7)               # chunks start mid-row
    elif pieces == "sub_blocks":
        monkeypatch.setattr(kernels.q4k5k, "SEARCH_SUB_BLOCKS", 24)
    else:
        monkeypatch.setattr(kernels.qkx_search, "SEARCH_VALUES", 32 * 256)  # pieces of 256 sub-blocks
    x = np.concatenate([CASES["student_t2"][:6], CASES["special"], CASES["positive"][:2]])
    for im in (None, IMATRICES["zeros"]):
        assert_same_blocks(kernels.quantize(x, qtype, imatrix=im, threads=1), ggml_quantize(x, qtype, im), qtype,
                           f"{pieces} chunks, imatrix={im is not None}")


@pytest.mark.parametrize("qtype", TYPES, ids=_name)
def test_dequantize_matches_gguf(qtype: QT) -> None:
    x = np.concatenate([CASES["student_t2"], CASES["special"], CASES["normal*1e+06"]])
    for im in (None, IMATRICES["random"]):
        data = ggml_quantize(x, qtype, im)
        ours = kernels.dequantize(data, qtype, x.shape)
        with np.errstate(all="ignore"):
            ref = gguf.quants.dequantize(data, qtype).reshape(x.shape).astype(np.float32)
        assert ours.dtype == np.float32 and ours.shape == x.shape
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    sane = slice(0, len(CASES["student_t2"]))       # the 1e6 rows decode to inf/nan where an fp16 d overflowed
    assert np.isfinite(ours[sane]).all()
    err = np.sqrt(np.mean((ours[sane] - x[sane]) ** 2) / np.mean(x[sane] ** 2))
    assert err < {QT.Q2_K: 0.6, QT.Q3_K: 0.3, QT.Q4_K: 0.15, QT.Q5_K: 0.08, QT.Q6_K: 0.04}[qtype], err
