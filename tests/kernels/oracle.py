"""ggml's own encoders, loaded through ctypes from the libggml-base bundled with the installed llama_cpp.

This is the bit-exact oracle of the kernel tests.  It must load in CI: a missing library is a test failure, never
a skip.
"""
from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache

import numpy as np
from gguf import GGMLQuantizationType as QT


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    import llama_cpp  # noqa: F401  (loads libggml-base and friends with the right search path)

    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    cands = sorted(glob.glob(os.path.join(libdir, "libggml-base.*")))
    if not cands:
        raise RuntimeError(f"libggml-base not found in {libdir}: the oracle cannot run")
    so = ctypes.CDLL(cands[0])
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.ggml_row_size.restype = ctypes.c_size_t
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return so


def ggml_quantize(x: np.ndarray, qtype: QT, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 (rows, n_per_row) with ggml_quantize_chunk; returns uint8 (rows, row_bytes)."""
    so = lib()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    rb = so.ggml_row_size(int(qtype), n)
    out = np.zeros((rows, rb), np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = so.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n,
                                     None if qw is None else qw.ctypes.data)
    assert written == rows * rb, (written, rows * rb)
    return out


def assert_same_blocks(ours: np.ndarray, ref: np.ndarray, qtype: QT, what: str = "") -> None:
    """100% of blocks identical; the message counts the differing blocks and shows the first one."""
    import kernels

    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    ts = kernels.get_kernel(qtype).type_size
    a, b = ours.reshape(-1, ts), ref.reshape(-1, ts)
    bad = np.flatnonzero((a != b).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise AssertionError(f"{qtype.name} {what}: {bad.size} of {len(a)} blocks differ from ggml; first: block "
                             f"{i}\n  ours: {a[i].tolist()}\n  ggml: {b[i].tolist()}")
