"""A ctypes mirror of ggml's ``struct ggml_tensor`` and the few ggml-base functions that read one.

llama-cpp-python hands the eval callback (``cb_eval``) a bare ``struct ggml_tensor *`` and does not declare the
struct.  :class:`GgmlTensor` mirrors ``ggml/include/ggml.h`` of the pinned llama.cpp (336 bytes on 64-bit
platforms).  Two independent checks keep it honest: :func:`self_check` builds a ``MUL_MAT`` node with ggml's own
functions and reads it back through the mirror (run before every collection), and a test compares every field
offset with ``offsetof`` compiled from the sdist's header.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64

GGML_TYPE_F32 = 0
GGML_OP_MUL_MAT = 29  # enum ggml_op; checked against ggml_op_name() by self_check
GGML_OP_MUL_MAT_ID = 30
GGML_OP_GET_ROWS = 40


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml.h)."""
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def tensor_at(address: int) -> GgmlTensor:
    return GgmlTensor.from_address(address)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@functools.lru_cache(maxsize=1)
def ggml_base() -> ctypes.CDLL:
    """``libggml-base`` as shipped inside llama_cpp (the same copy llama.cpp itself uses), with signatures."""
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).resolve().parent / "lib")
    p = ctypes.c_void_p
    for name, args, res in [
        ("ggml_nbytes", [p], ctypes.c_size_t),
        ("ggml_backend_tensor_get", [p, p, ctypes.c_size_t, ctypes.c_size_t], None),
        ("ggml_backend_tensor_set", [p, p, ctypes.c_size_t, ctypes.c_size_t], None),
        ("ggml_is_contiguous", [p], ctypes.c_bool),
        ("ggml_backend_buffer_is_host", [p], ctypes.c_bool),
        ("ggml_op_name", [ctypes.c_int], ctypes.c_char_p),
        ("ggml_tensor_overhead", [], ctypes.c_size_t),
        ("ggml_init", [_InitParams], p),
        ("ggml_free", [p], None),
        ("ggml_new_tensor_2d", [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], p),
        ("ggml_mul_mat", [p, p, p], p),
        ("ggml_set_name", [p, ctypes.c_char_p], p),
    ]:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def read_f32(address: int) -> np.ndarray:
    """The data of the F32 tensor at ``address`` as a numpy array of ggml shape reversed (ne3, ne2, ne1, ne0),
    honouring its strides: a view of host memory, or a copy fetched from a device buffer."""
    t = tensor_at(address)
    lib = ggml_base()
    nbytes = lib.ggml_nbytes(address)
    if t.buffer is None or lib.ggml_backend_buffer_is_host(t.buffer):
        raw = np.frombuffer((ctypes.c_char * nbytes).from_address(t.data), dtype=np.uint8)
    else:
        raw = np.empty(nbytes, np.uint8)
        lib.ggml_backend_tensor_get(address, raw.ctypes.data, 0, nbytes)
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    return np.lib.stride_tricks.as_strided(raw.view(np.float32) if strides[-1] == 4 else raw, shape, strides,
                                           writeable=False)


def read_i32(address: int) -> np.ndarray:
    """Like :func:`read_f32` for an I32 tensor (always a copy)."""
    t = tensor_at(address)
    lib = ggml_base()
    nbytes = lib.ggml_nbytes(address)
    raw = np.empty(nbytes, np.uint8)
    lib.ggml_backend_tensor_get(address, raw.ctypes.data, 0, nbytes)
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    return np.lib.stride_tricks.as_strided(raw.view(np.int32), shape, strides, writeable=False).copy()


def write_f32(address: int, values: np.ndarray) -> None:
    """Overwrite the data of the contiguous F32 tensor at ``address`` with ``values`` (any shape of as many
    elements), through ``ggml_backend_tensor_set`` so host and device buffers alike are written."""
    lib = ggml_base()
    t = tensor_at(address)
    if t.type != GGML_TYPE_F32 or not lib.ggml_is_contiguous(address):
        raise ValueError(f"{bytes(t.name)!r} is not a contiguous F32 tensor")
    data = np.ascontiguousarray(values, dtype=np.float32)
    nbytes = lib.ggml_nbytes(address)
    if data.nbytes != nbytes:
        raise ValueError(f"{data.nbytes} bytes given for a tensor of {nbytes}")
    lib.ggml_backend_tensor_set(address, data.ctypes.data, 0, nbytes)


@functools.lru_cache(maxsize=1)
def self_check() -> None:
    """Build ``c = mul_mat(a, b)`` with ggml's own functions and read it through :class:`GgmlTensor`; raises
    RuntimeError when the mirror or the op numbers do not match this libggml (a llama.cpp upgrade changed them)."""
    lib = ggml_base()
    problems = []
    if ctypes.sizeof(GgmlTensor) != 336 and ctypes.sizeof(ctypes.c_void_p) == 8:
        problems.append(f"size {ctypes.sizeof(GgmlTensor)} != 336")
    for op, want in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID"),
                     (GGML_OP_GET_ROWS, b"GET_ROWS")):
        if lib.ggml_op_name(op) != want:
            problems.append(f"op {op} is {lib.ggml_op_name(op)!r}, not {want!r}")
    ctx = lib.ggml_init(_InitParams(lib.ggml_tensor_overhead() * 8, None, True))
    try:
        a = lib.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 32, 4)
        b = lib.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 32, 16)
        lib.ggml_set_name(a, b"blk.0.attn_q.weight")
        c = lib.ggml_mul_mat(ctx, a, b)
        ta, tc = tensor_at(a), tensor_at(c)
        got = {"a.ne": tuple(ta.ne), "a.nb": tuple(ta.nb), "a.name": ta.name, "a.type": ta.type,
               "c.op": tc.op, "c.src": (tc.src[0], tc.src[1], tc.src[2]), "c.ne": tuple(tc.ne),
               "nbytes": lib.ggml_nbytes(a)}
        want = {"a.ne": (32, 4, 1, 1), "a.nb": (4, 128, 512, 512), "a.name": b"blk.0.attn_q.weight",
                "a.type": GGML_TYPE_F32, "c.op": GGML_OP_MUL_MAT, "c.src": (a, b, None), "c.ne": (4, 16, 1, 1),
                "nbytes": 512}
        problems += [f"{k}: {got[k]!r} != {want[k]!r}" for k in want if got[k] != want[k]]
    finally:
        lib.ggml_free(ctx)
    if problems:
        raise RuntimeError("the ggml_tensor mirror does not match this llama.cpp build (" + "; ".join(problems) +
                           "); update app/core/ggml_tensor.py to ggml.h")
