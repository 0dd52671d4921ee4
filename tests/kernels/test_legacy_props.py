"""Property tests for the 32-value block types and Q6_K: any finite float32 data (subnormals and values near
FLT_MAX included), with or without an imatrix, gives ggml's bytes; decoding gives gguf's values."""
from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import kernels

from .oracle import assert_same_blocks, ggml_quantize

LEGACY = [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]
FINITE = st.floats(width=32, allow_nan=False, allow_infinity=False)
MODERATE = st.floats(-1e4, 1e4, width=32)
WEIGHT = st.floats(0, 1e3, width=32)


@st.composite
def matrices(draw, block: int = 32, max_blocks: int = 4):
    rows = draw(st.integers(1, 3))
    n = block * draw(st.integers(1, max_blocks))
    elements = draw(st.sampled_from([FINITE, MODERATE, st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-40])]))
    x = draw(arrays(np.float32, (rows, n), elements=elements))
    qw = draw(st.none() | arrays(np.float32, (n,), elements=WEIGHT))
    return x, qw


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=matrices(), qtype=st.sampled_from(LEGACY))
def test_legacy_types_match_ggml(data, qtype) -> None:
    x, qw = data
    with np.errstate(all="ignore"):  # overflow on data near FLT_MAX is ggml's behaviour too
        ours = kernels.quantize(x, qtype, imatrix=qw, threads=1)
    assert_same_blocks(ours, ggml_quantize(x, qtype, qw), qtype, "hypothesis data")


@SETTINGS
@given(data=matrices(block=256, max_blocks=1))
def test_q6_k_matches_ggml(data) -> None:
    x, qw = data
    with np.errstate(all="ignore"):
        ours = kernels.quantize(x, QT.Q6_K, imatrix=qw, threads=1)
    assert_same_blocks(ours, ggml_quantize(x, QT.Q6_K, qw), QT.Q6_K, "hypothesis data")


@SETTINGS
@given(data=matrices(), qtype=st.sampled_from(LEGACY))
def test_legacy_decode_matches_gguf(data, qtype) -> None:
    x, _ = data
    blob = ggml_quantize(x, qtype)
    with np.errstate(all="ignore"):
        ours = kernels.dequantize(blob, qtype, x.shape)
        ref = gguf.quants.dequantize(blob, qtype).reshape(x.shape).astype(np.float32)
    assert np.array_equal(ours, ref, equal_nan=True)
